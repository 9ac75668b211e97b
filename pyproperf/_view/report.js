/* pyproperf view: the report's script (ours, no library).
 *
 * Reads the profile model (pyproperf/_view/_model.py) from the JSON element
 * and draws the views: flame graph, top table, label filters, split by
 * label, source lines.  All numbers are computed here from the samples, so
 * that every view follows the label filters.  Text from the profile (names,
 * files, labels, source) is untrusted: it is only ever written with
 * textContent, never parsed as HTML.
 *
 * The state (tab, sample type, zoom, search, filters, split key, function)
 * lives in the URL fragment, so a view can be linked to and reloaded.
 */
(function () {
  'use strict';

  window.addEventListener('error', function (e) {
    document.body.dataset.error = String(e.message);
    var notes = document.getElementById('notes');
    var p = document.createElement('p');
    p.className = 'note error';
    p.textContent = 'Error in the report: ' + e.message;
    notes.appendChild(p);
  });
  var D = JSON.parse(document.getElementById('profile-data').textContent);
  var S = D.strings;
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // --- the model --------------------------------------------------------------
  var nFuncs = D.funcs.length / 3;
  var funcName = new Array(nFuncs), funcFile = new Array(nFuncs);
  var funcStart = new Int32Array(nFuncs);
  for (var i = 0; i < nFuncs; i++) {
    funcName[i] = S[D.funcs[3 * i]];
    funcFile[i] = S[D.funcs[3 * i + 1]];
    funcStart[i] = D.funcs[3 * i + 2];
  }
  var nFrames = D.frames.length / 2;
  var frameFunc = new Int32Array(nFrames), frameLine = new Int32Array(nFrames);
  for (i = 0; i < nFrames; i++) {
    frameFunc[i] = D.frames[2 * i];
    frameLine[i] = D.frames[2 * i + 1];
  }
  // The call tree of frames (trie): node 0 is the root, parents come first.
  var N = D.nf.length + 1;
  var tParent = new Int32Array(N), tFrame = new Int32Array(N);
  tParent[0] = -1; tFrame[0] = -1;
  for (i = 1; i < N; i++) {
    tParent[i] = i - D.np[i - 1];
    tFrame[i] = D.nf[i - 1];
  }
  // The flame graph's tree: the call tree with frames of one function merged
  // (a function called from two lines of its caller is one box, as in pprof).
  var tDisp = new Int32Array(N);
  var dParentA = [-1], dFuncA = [-1];
  var dIndex = new Map();
  for (i = 1; i < N; i++) {
    var pd = tDisp[tParent[i]], f = frameFunc[tFrame[i]];
    var key = pd * nFuncs + f;
    var d = dIndex.get(key);
    if (d === undefined) {
      d = dParentA.length;
      dIndex.set(key, d);
      dParentA.push(pd);
      dFuncA.push(f);
    }
    tDisp[i] = d;
  }
  dIndex = null;
  var M = dParentA.length;
  var dParent = Int32Array.from(dParentA), dFunc = Int32Array.from(dFuncA);
  dParentA = dFuncA = null;
  var dDepth = new Int32Array(M);
  var maxDepth = 0;
  for (i = 1; i < M; i++) {
    dDepth[i] = dDepth[dParent[i]] + 1;
    if (dDepth[i] > maxDepth) maxDepth = dDepth[i];
  }
  // Children lists (CSR).
  var childCount = new Int32Array(M + 1);
  for (i = 1; i < M; i++) childCount[dParent[i] + 1]++;
  for (i = 1; i <= M; i++) childCount[i] += childCount[i - 1];
  var childStart = Int32Array.from(childCount);
  var childList = new Int32Array(Math.max(M - 1, 0));
  var fill = Int32Array.from(childCount);
  for (i = 1; i < M; i++) childList[fill[dParent[i]]++] = i;
  // Whether a box is the outermost of its function on its stack: cum counts
  // each function once per stack, as pprof does (recursion).
  var dFirst = new Uint8Array(M);
  for (i = 1; i < M; i++) {
    var first = 1;
    for (var a = dParent[i]; a > 0; a = dParent[a]) {
      if (dFunc[a] === dFunc[i]) { first = 0; break; }
    }
    dFirst[i] = first;
  }

  // Samples and label sets.
  var nSamples = D.sn.length;
  var sNode = Int32Array.from(D.sn), sLabels = Int32Array.from(D.sl);
  var types = D.types;
  var sValues = D.sv.map(function (col) { return Float64Array.from(col); });
  var labelSets = D.ls.map(function (flat) {
    var m = new Map();
    for (var j = 0; j < flat.length; j += 2) m.set(S[flat[j]], S[flat[j + 1]]);
    return m;
  });
  var labelKeys = new Map(); // key -> Map(value -> sample indexes count)
  labelSets.forEach(function (m) {
    m.forEach(function (v, k) {
      if (!labelKeys.has(k)) labelKeys.set(k, new Set());
      labelKeys.get(k).add(v);
    });
  });
  var keyOrder = Array.from(labelKeys.keys()).sort(function (x, y) {
    if (x === 'thread') return -1;
    if (y === 'thread') return 1;
    return x < y ? -1 : x > y ? 1 : 0;
  });

  // --- numbers: pprof's unit scaling (internal/measurement) ---------------------
  var UNIT_TYPES = [
    { units: [['B', ['b', 'byte'], 1], ['kB', ['kb', 'kbyte', 'kilobyte'], 1024],
      ['MB', ['mb', 'mbyte', 'megabyte'], Math.pow(2, 20)],
      ['GB', ['gb', 'gbyte', 'gigabyte'], Math.pow(2, 30)],
      ['TB', ['tb', 'tbyte', 'terabyte'], Math.pow(2, 40)],
      ['PB', ['pb', 'pbyte', 'petabyte'], Math.pow(2, 50)]], dflt: ['B', 1] },
    { units: [['ns', ['ns', 'nanosecond'], 1], ['us', ['\u03bcs', 'us', 'microsecond'], 1e3],
      ['ms', ['ms', 'millisecond'], 1e6], ['s', ['s', 'sec', 'second'], 1e9],
      ['hrs', ['hour', 'hr'], 3600e9]], dflt: ['s', 1e9] }
  ];
  function sniff(ut, unit) {
    unit = unit.toLowerCase();
    if (new TextEncoder().encode(unit).length > 2 && unit.endsWith('s')) unit = unit.slice(0, -1);
    for (var j = 0; j < ut.units.length; j++) {
      if (ut.units[j][1].indexOf(unit) >= 0) return ut.units[j];
    }
    return null;
  }
  var scaleCache = new Map();
  function unitType(unit) {
    if (!scaleCache.has(unit)) {
      var found = null;
      UNIT_TYPES.forEach(function (ut) {
        var u = sniff(ut, unit);
        if (u && !found) found = { ut: ut, factor: u[2] };
      });
      scaleCache.set(unit, found);
    }
    return scaleCache.get(unit);
  }
  function fmt(value, unit) {
    if (value < 0) return '-' + fmt(-value, unit);
    var t = unitType(unit), v = value, name = '';
    if (t) {
      v = value * t.factor;
      var best = 0;
      t.ut.units.forEach(function (u) {
        if (u[2] >= best && v / u[2] >= 1) { best = u[2]; name = u[0]; }
      });
      if (best) v = v / best;
      else { v = v / t.ut.dflt[1]; name = t.ut.dflt[0]; }
    }
    var text = v.toFixed(2);
    if (text.endsWith('.00')) text = text.slice(0, -3);
    if (text === '0' || text === '-0') return '0';
    return text + name;
  }
  function pct(v, total) {
    if (!total) return '0%';
    return (100 * v / total).toFixed(2) + '%';
  }

  // --- state ------------------------------------------------------------------
  var state = {
    tab: 'flame', type: D.defaultType, zoom: 0, q: '', focus: new Map(), hide: new Map(),
    split: keyOrder.indexOf('thread') >= 0 ? 'thread' : (keyOrder[0] || ''), fn: -1,
    sort: 'flat', topq: ''
  };
  function readHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ''));
    state.tab = p.get('tab') || 'flame';
    var t = p.get('type');
    state.type = D.defaultType;
    if (t !== null) {
      var byName = types.findIndex(function (x) { return x[0] === t; });
      if (byName >= 0) state.type = byName;
      else if (/^\d+$/.test(t) && +t < types.length) state.type = +t;
    }
    state.zoom = Math.max(0, Math.min(M - 1, parseInt(p.get('zoom') || '0', 10) || 0));
    state.q = p.get('q') || '';
    state.focus = parsePairs(p.getAll('focus'));
    state.hide = parsePairs(p.getAll('hide'));
    if (p.get('split') !== null) state.split = p.get('split');
    var fn = p.get('fn');
    state.fn = fn !== null && /^\d+$/.test(fn) && +fn < nFuncs ? +fn : -1;
    state.sort = p.get('sort') || 'flat';
  }
  function parsePairs(list) {
    var m = new Map();
    list.forEach(function (kv) {
      var at = kv.indexOf('=');
      if (at <= 0) return;
      var k = kv.slice(0, at), v = kv.slice(at + 1);
      if (!m.has(k)) m.set(k, new Set());
      m.get(k).add(v);
    });
    return m;
  }
  function writeHash() {
    var p = new URLSearchParams();
    p.set('tab', state.tab);
    p.set('type', types[state.type][0]);
    if (state.zoom) p.set('zoom', String(state.zoom));
    if (state.q) p.set('q', state.q);
    state.focus.forEach(function (vs, k) { vs.forEach(function (v) { p.append('focus', k + '=' + v); }); });
    state.hide.forEach(function (vs, k) { vs.forEach(function (v) { p.append('hide', k + '=' + v); }); });
    if (state.split) p.set('split', state.split);
    if (state.fn >= 0) p.set('fn', String(state.fn));
    if (state.sort !== 'flat') p.set('sort', state.sort);
    history.replaceState(null, '', '#' + p.toString());
  }

  // --- the numbers under the current filters ------------------------------------
  function labelSetOk(extra) {
    return labelSets.map(function (m) {
      var ok = true;
      state.focus.forEach(function (vs, k) { if (!vs.has(m.get(k))) ok = false; });
      state.hide.forEach(function (vs, k) { if (m.has(k) && vs.has(m.get(k))) ok = false; });
      if (ok && extra) ok = extra(m);
      return ok;
    });
  }
  // Values per call-tree node and per flame box for sample type t and a label predicate.
  function compute(t, extra) {
    var ok = labelSetOk(extra);
    var vals = sValues[t];
    var tSelf = new Float64Array(N);
    var total = 0;
    for (var s = 0; s < nSamples; s++) {
      if (!ok[sLabels[s]]) continue;
      var v = vals[s];
      tSelf[sNode[s]] += v;
      total += Math.abs(v);
    }
    var tCum = Float64Array.from(tSelf);
    for (var n = N - 1; n > 0; n--) tCum[tParent[n]] += tCum[n];
    var dSelf = new Float64Array(M);
    for (n = 1; n < N; n++) dSelf[tDisp[n]] += tSelf[n];
    var dCum = Float64Array.from(dSelf);
    for (var b = M - 1; b > 0; b--) dCum[dParent[b]] += dCum[b];
    dCum[0] = tCum[0];
    return { tSelf: tSelf, tCum: tCum, dSelf: dSelf, dCum: dCum, total: total, sum: tCum[0] };
  }
  function functionTotals(c) {
    var flat = new Float64Array(nFuncs), cum = new Float64Array(nFuncs);
    for (var b = 1; b < M; b++) {
      flat[dFunc[b]] += c.dSelf[b];
      if (dFirst[b]) cum[dFunc[b]] += c.dCum[b];
    }
    return { flat: flat, cum: cum };
  }

  // --- search -------------------------------------------------------------------
  var funcMatch = new Uint8Array(nFuncs);
  function compileSearch(q) {
    if (!q) return null;
    try { return new RegExp(q); } catch (e) {
      return new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    }
  }
  function updateMatches() {
    var re = compileSearch(state.q);
    for (var f = 0; f < nFuncs; f++) funcMatch[f] = re && re.test(funcName[f]) ? 1 : 0;
  }

  // --- colours ------------------------------------------------------------------
  function hash(text) {
    var h = 2166136261;
    for (var j = 0; j < text.length; j++) { h ^= text.charCodeAt(j); h = Math.imul(h, 16777619); }
    return h >>> 0;
  }
  var colourCache = new Map();
  function colour(f) {
    if (f === D.cutFunc) return '#c8c8c8';
    var c = colourCache.get(f);
    if (!c) {
      var name = funcName[f], dot = name.lastIndexOf('.');
      var h = hash(dot > 0 ? name.slice(0, dot) : name);
      c = 'hsl(' + (h % 50 + 5) + ',' + (60 + (h >> 8) % 25) + '%,' + (62 + (h >> 16) % 14) + '%)';
      colourCache.set(f, c);
    }
    return c;
  }

  // --- flame graph --------------------------------------------------------------
  var ROW = 18, MIN_WIDTH = 1.5, MAX_BOXES = 6000;
  var tooltip = $('tooltip');

  function Flame(container, options) {
    this.el = container;
    this.zoom = 0;
    this.c = null;
    this.onZoom = options.onZoom || null;
    var self = this;
    container.addEventListener('click', function (e) {
      var box = e.target.closest('.fn');
      if (!box || !container.contains(box)) return;
      self.setZoom(+box.dataset.id);
    });
    container.addEventListener('mousemove', function (e) {
      var box = e.target.closest('.fn');
      if (!box) { tooltip.hidden = true; return; }
      showTooltip(self.c, +box.dataset.id, e.clientX, e.clientY);
    });
    container.addEventListener('mouseleave', function () { tooltip.hidden = true; });
  }
  Flame.prototype.setZoom = function (d) {
    this.zoom = d;
    if (this.onZoom) this.onZoom(d);
    else this.draw(this.c);
  };
  Flame.prototype.draw = function (c) {
    this.c = c;
    var root = this.el;
    root.textContent = '';
    var width = root.clientWidth || 1000;
    var zoom = this.zoom;
    var unit = types[state.type][1];
    var boxes = 0, depthMax = 0;
    var frag = document.createDocumentFragment();
    function add(d, x, w, depth, cls) {
      var box = el('div', 'fn' + cls);
      box.dataset.id = String(d);
      box.style.left = x + 'px';
      box.style.width = Math.max(w - 1, 0.5) + 'px';
      box.style.top = depth * ROW + 'px';
      if (d > 0) {
        box.style.background = colour(dFunc[d]);
        if (funcMatch[dFunc[d]]) box.classList.add('match');
        box.textContent = funcName[dFunc[d]];
      } else {
        box.textContent = 'all: ' + fmt(c.sum, unit);
      }
      frag.appendChild(box);
      boxes++;
      if (depth > depthMax) depthMax = depth;
    }
    // The zoomed box's ancestors, full width, above it.
    var chain = [];
    for (var a = zoom; a >= 0; a = dParent[a]) chain.push(a);
    chain.reverse();
    for (var k = 0; k < chain.length - 1; k++) add(chain[k], 0, width, k, ' anc');
    var base = chain.length - 1;
    var scale = c.dCum[zoom] > 0 ? width / c.dCum[zoom] : 0;
    add(zoom, 0, width, base, zoom === 0 ? ' root' : '');
    // Breadth first, so that when boxes run out the deepest go first.
    var queue = [zoom], xs = [0], qi = 0;
    while (qi < queue.length && boxes < MAX_BOXES) {
      var d = queue[qi], x = xs[qi]; qi++;
      var kids = [];
      for (var j = childStart[d]; j < childStart[d + 1]; j++) {
        var ch = childList[j];
        if (c.dCum[ch] * scale >= MIN_WIDTH) kids.push(ch);
      }
      kids.sort(function (p, q) { return c.dCum[q] - c.dCum[p] || (funcName[dFunc[p]] < funcName[dFunc[q]] ? -1 : 1); });
      for (j = 0; j < kids.length && boxes < MAX_BOXES; j++) {
        var w = c.dCum[kids[j]] * scale;
        add(kids[j], x, w, base + dDepth[kids[j]] - dDepth[zoom], '');
        queue.push(kids[j]); xs.push(x);
        x += w;
      }
    }
    root.appendChild(frag);
    root.style.height = (depthMax + 1) * ROW + 'px';
    root.dataset.boxes = String(boxes);
    root.dataset.zoom = String(zoom);
  };

  function showTooltip(c, d, x, y) {
    if (!c) return;
    var unit = types[state.type][1];
    tooltip.textContent = '';
    if (d === 0) {
      tooltip.appendChild(el('div', 'tt-name', 'all'));
      tooltip.appendChild(el('div', null, 'total ' + fmt(c.sum, unit)));
    } else {
      var f = dFunc[d];
      tooltip.appendChild(el('div', 'tt-name', funcName[f]));
      if (funcFile[f]) tooltip.appendChild(el('div', 'tt-file', funcFile[f]));
      tooltip.appendChild(el('div', null, 'flat ' + fmt(c.dSelf[d], unit) + ' (' + pct(c.dSelf[d], c.total) + ')'));
      tooltip.appendChild(el('div', null, 'cum ' + fmt(c.dCum[d], unit) + ' (' + pct(c.dCum[d], c.total) + ')'));
    }
    tooltip.hidden = false;
    var tw = tooltip.offsetWidth, th = tooltip.offsetHeight;
    tooltip.style.left = Math.min(x + 12, window.innerWidth - tw - 4) + 'px';
    tooltip.style.top = (y + 16 + th > window.innerHeight ? y - th - 8 : y + 16) + 'px';
  }

  var mainFlame = new Flame($('flame'), {
    onZoom: function (d) { state.zoom = d; if (d > 0) state.fn = dFunc[d]; update(false); }
  });

  // --- header, notes, labels ------------------------------------------------------
  var current = null;
  function renderHeader() {
    $('title').textContent = D.meta.title;
    var sel = $('type');
    if (!sel.options.length) {
      types.forEach(function (t, j) {
        var o = el('option', null, t[0] + ' (' + t[1] + ')');
        o.value = String(j);
        sel.appendChild(o);
      });
    }
    sel.value = String(state.type);
    var unit = types[state.type][1];
    var tot = $('total');
    tot.textContent = fmt(current.total, unit);
    tot.dataset.value = String(current.total);
    var parts = [];
    state.focus.forEach(function (vs, k) { parts.push('focus ' + k + '=' + Array.from(vs).join('|')); });
    state.hide.forEach(function (vs, k) { parts.push('hide ' + k + '=' + Array.from(vs).join('|')); });
    $('filter-summary').textContent = parts.length ? parts.join('; ') + ' (' + pct(current.total, allTotal()) + ' of all)' : '';
    var sr = $('search-result');
    if (state.q) {
      var matched = 0, count = 0;
      for (var f = 0; f < nFuncs; f++) count += funcMatch[f];
      for (var b = 1; b < M; b++) {
        if (!funcMatch[dFunc[b]]) continue;
        var outer = true;
        for (var a = dParent[b]; a > 0; a = dParent[a]) if (funcMatch[dFunc[a]]) { outer = false; break; }
        if (outer) matched += current.dCum[b];
      }
      sr.textContent = count + ' function' + (count === 1 ? '' : 's') + ' match: ' +
        fmt(matched, unit) + ' (' + pct(matched, current.total) + ')';
      sr.dataset.value = String(matched);
    } else {
      sr.textContent = '';
      delete sr.dataset.value;
    }
    document.querySelectorAll('#tabs button').forEach(function (b) {
      b.classList.toggle('active', b.dataset.tab === state.tab);
    });
    document.querySelectorAll('.tab').forEach(function (t) {
      t.hidden = t.id !== 'tab-' + state.tab;
    });
  }
  var allTotals = {};
  function allTotal() {
    if (!(state.type in allTotals)) {
      var v = sValues[state.type], s = 0;
      for (var j = 0; j < nSamples; j++) s += Math.abs(v[j]);
      allTotals[state.type] = s;
    }
    return allTotals[state.type];
  }

  function renderNotes() {
    var notes = $('notes');
    notes.textContent = '';
    if (D.cut) {
      notes.appendChild(el('p', 'note cut-note',
        'This profile is large: its call tree has ' + D.cut.nodes.toLocaleString('en') +
        ' nodes, of which ' + D.cut.kept.toLocaleString('en') + ' are kept here. Nodes that each held at most ' +
        (100 * D.cut.largestShare).toPrecision(2) + '% of every sample type were merged into "' +
        funcName[D.cutFunc] + '" boxes. Totals, label totals and the numbers of the nodes kept are exact; ' +
        'functions seen only in cut stacks are missing.'));
    }
    if (!nSamples) notes.appendChild(el('p', 'note', 'This profile has no samples.'));
  }

  function labelTotals() {
    // value totals per key under the current type, all samples (not filtered)
    var v = sValues[state.type];
    var perSet = new Float64Array(labelSets.length);
    for (var j = 0; j < nSamples; j++) perSet[sLabels[j]] += Math.abs(v[j]);
    var out = new Map();
    labelSets.forEach(function (m, idx) {
      m.forEach(function (val, k) {
        if (!out.has(k)) out.set(k, new Map());
        var mk = out.get(k);
        mk.set(val, (mk.get(val) || 0) + perSet[idx]);
      });
    });
    return out;
  }

  function toggle(map, k, v) {
    if (!map.has(k)) map.set(k, new Set());
    var s = map.get(k);
    if (s.has(v)) s.delete(v); else s.add(v);
    if (!s.size) map.delete(k);
  }

  function renderLabels() {
    var list = $('label-list');
    list.textContent = '';
    var totals = labelTotals(), all = allTotal(), unit = types[state.type][1];
    if (state.focus.size || state.hide.size) {
      var clear = el('button', 'clear', 'clear filters');
      clear.type = 'button';
      clear.addEventListener('click', function () {
        state.focus = new Map(); state.hide = new Map(); update(true);
      });
      list.appendChild(clear);
    }
    var keys = keyOrder.slice();
    if (keys.indexOf('thread') < 0) keys.unshift('thread');
    keys.forEach(function (k) {
      var box = el('div', 'label-key');
      box.dataset.key = k;
      box.appendChild(el('h3', null, k));
      var vals = totals.get(k);
      if (!vals) {
        box.appendChild(el('p', 'empty', 'no sample has this label'));
        list.appendChild(box);
        return;
      }
      var entries = Array.from(vals.entries()).sort(function (x, y) { return y[1] - x[1] || (x[0] < y[0] ? -1 : 1); });
      var shown = entries.slice(0, 100);
      shown.forEach(function (e) {
        var row = el('div', 'label-value');
        row.dataset.key = k;
        row.dataset.value = e[0];
        var fb = el('button', 'focus', 'focus');
        fb.type = 'button';
        fb.title = 'only samples with ' + k + '=' + e[0] + ' (pprof -tagfocus)';
        fb.setAttribute('aria-pressed', String(!!(state.focus.get(k) && state.focus.get(k).has(e[0]))));
        fb.addEventListener('click', function () { toggle(state.focus, k, e[0]); state.zoom = 0; update(true); });
        var hb = el('button', 'hide', 'hide');
        hb.type = 'button';
        hb.title = 'drop samples with ' + k + '=' + e[0] + ' (pprof -tagignore)';
        hb.setAttribute('aria-pressed', String(!!(state.hide.get(k) && state.hide.get(k).has(e[0]))));
        hb.addEventListener('click', function () { toggle(state.hide, k, e[0]); state.zoom = 0; update(true); });
        row.appendChild(fb);
        row.appendChild(hb);
        row.appendChild(el('span', 'value', e[0]));
        row.appendChild(el('span', 'share', fmt(e[1], unit) + ' ' + pct(e[1], all)));
        box.appendChild(row);
      });
      if (entries.length > shown.length) {
        box.appendChild(el('p', 'empty', (entries.length - shown.length) + ' smaller values not listed'));
      }
      list.appendChild(box);
    });
  }

  // --- flame tab --------------------------------------------------------------------
  function renderFlameTab() {
    var crumbs = $('crumbs');
    crumbs.textContent = '';
    var chain = [];
    for (var a = state.zoom; a >= 0; a = dParent[a]) chain.push(a);
    chain.reverse();
    chain.forEach(function (d, j) {
      if (j) crumbs.appendChild(el('span', 'sep', '\u203a'));
      var b = el('button', 'crumb', d === 0 ? 'all' : funcName[dFunc[d]]);
      b.type = 'button';
      b.dataset.id = String(d);
      b.addEventListener('click', function () { mainFlame.setZoom(d); });
      crumbs.appendChild(b);
    });
    var sel = $('selected');
    sel.textContent = '';
    if (state.zoom > 0) {
      var d = state.zoom, f = dFunc[d], unit = types[state.type][1];
      sel.appendChild(el('span', 'sel-name', funcName[f]));
      sel.appendChild(el('span', null, ' flat ' + fmt(current.dSelf[d], unit) + ', cum ' +
        fmt(current.dCum[d], unit) + ' (' + pct(current.dCum[d], current.total) + ' of the total) '));
      var src = el('button', null, 'source');
      src.type = 'button';
      src.addEventListener('click', function () { state.fn = f; state.tab = 'source'; update(false); });
      sel.appendChild(src);
    }
    mainFlame.zoom = state.zoom;
    mainFlame.draw(current);
  }

  // --- top tab --------------------------------------------------------------------
  var MAX_ROWS = 1000;
  function renderTop() {
    var ft = functionTotals(current), unit = types[state.type][1], total = current.total;
    var re = compileSearch(state.topq);
    var rows = [];
    for (var f = 0; f < nFuncs; f++) {
      if (!ft.flat[f] && !ft.cum[f]) continue;
      if (re && !re.test(funcName[f])) continue;
      rows.push(f);
    }
    var by = state.sort;
    rows.sort(function (x, y) {
      if (by === 'name') return funcName[x] < funcName[y] ? -1 : funcName[x] > funcName[y] ? 1 : 0;
      var p = by === 'cum' ? ft.cum : ft.flat, q = by === 'cum' ? ft.flat : ft.cum;
      return Math.abs(p[y]) - Math.abs(p[x]) || (funcName[x] < funcName[y] ? -1 : funcName[x] > funcName[y] ? 1 : 0) || Math.abs(q[y]) - Math.abs(q[x]);
    });
    var body = document.querySelector('#top-table tbody');
    body.textContent = '';
    var frag = document.createDocumentFragment();
    rows.slice(0, MAX_ROWS).forEach(function (f) {
      var tr = el('tr');
      tr.dataset.fn = String(f);
      tr.dataset.flat = String(ft.flat[f]);
      tr.dataset.cum = String(ft.cum[f]);
      if (funcMatch[f]) tr.className = 'match';
      tr.appendChild(el('td', 'num', fmt(ft.flat[f], unit)));
      tr.appendChild(el('td', 'num', pct(ft.flat[f], total)));
      tr.appendChild(el('td', 'num', fmt(ft.cum[f], unit)));
      tr.appendChild(el('td', 'num', pct(ft.cum[f], total)));
      var name = el('td', 'name');
      var link = el('button', 'fn-link', funcName[f]);
      link.type = 'button';
      link.title = funcFile[f] || '';
      link.addEventListener('click', function () { state.fn = f; state.tab = 'source'; update(false); });
      name.appendChild(link);
      tr.appendChild(name);
      frag.appendChild(tr);
    });
    body.appendChild(frag);
    $('top-count').textContent = rows.length > MAX_ROWS
      ? 'showing ' + MAX_ROWS + ' of ' + rows.length + ' functions'
      : rows.length + ' functions';
    document.querySelectorAll('#top-table th').forEach(function (th) {
      th.classList.toggle('sorted', th.dataset.sort === by);
    });
  }

  // --- split tab ------------------------------------------------------------------
  var MAX_SPLIT = 16;
  function renderSplit() {
    var sel = $('split-key');
    sel.textContent = '';
    keyOrder.forEach(function (k) { var o = el('option', null, k); o.value = k; sel.appendChild(o); });
    var out = $('split');
    out.textContent = '';
    if (!keyOrder.length) {
      out.appendChild(el('p', 'empty', 'No sample has a label: nothing to split by.'));
      return;
    }
    if (keyOrder.indexOf(state.split) < 0) state.split = keyOrder[0];
    sel.value = state.split;
    var k = state.split, unit = types[state.type][1];
    var totals = new Map(), noneTotal = 0;
    var ok = labelSetOk(null), v = sValues[state.type];
    for (var j = 0; j < nSamples; j++) {
      if (!ok[sLabels[j]]) continue;
      var m = labelSets[sLabels[j]];
      if (m.has(k)) totals.set(m.get(k), (totals.get(m.get(k)) || 0) + Math.abs(v[j]));
      else noneTotal += Math.abs(v[j]);
    }
    var groups = Array.from(totals.entries()).sort(function (x, y) { return y[1] - x[1]; });
    if (noneTotal) groups.push([null, noneTotal]);
    groups.slice(0, MAX_SPLIT).forEach(function (g) {
      var section = el('section', 'split-group');
      section.dataset.value = g[0] === null ? '' : g[0];
      section.dataset.total = String(g[1]);
      var h = el('h3');
      h.appendChild(el('span', 'split-value', g[0] === null ? '(no ' + k + ' label)' : k + '=' + g[0]));
      h.appendChild(el('span', 'share', ' ' + fmt(g[1], unit) + ' (' + pct(g[1], current.total) + ')'));
      section.appendChild(h);
      var box = el('div', 'flame');
      section.appendChild(box);
      out.appendChild(section);
      var value = g[0];
      var c = compute(state.type, function (lm) { return value === null ? !lm.has(k) : lm.get(k) === value; });
      var fl = new Flame(box, {});
      fl.draw(c);
    });
    if (groups.length > MAX_SPLIT) {
      out.appendChild(el('p', 'empty', (groups.length - MAX_SPLIT) + ' smaller groups not drawn'));
    }
  }

  // --- source tab -------------------------------------------------------------------
  function renderSource() {
    var out = $('source');
    out.textContent = '';
    var f = state.fn;
    if (f < 0) {
      out.appendChild(el('p', 'empty', 'Pick a function: click its name in the top table, or a box in the flame graph and then "source".'));
      return;
    }
    var unit = types[state.type][1];
    out.appendChild(el('h2', 'src-name', funcName[f]));
    out.appendChild(el('p', 'src-file', funcFile[f] || '(no file name)'));
    // Per line: flat = samples whose leaf is the line, cum = samples with the
    // line on the stack (once per sample).
    var flat = new Map(), cum = new Map();
    for (var n = 1; n < N; n++) {
      var fr = tFrame[n];
      if (frameFunc[fr] !== f) continue;
      var line = frameLine[fr];
      flat.set(line, (flat.get(line) || 0) + current.tSelf[n]);
      var outer = true;
      for (var a = tParent[n]; a > 0; a = tParent[a]) if (tFrame[a] === fr) { outer = false; break; }
      if (outer) cum.set(line, (cum.get(line) || 0) + current.tCum[n]);
    }
    var src = D.sources[String(f)];
    var table = el('table', 'src');
    var head = el('tr');
    ['line', 'flat', 'cum', ''].forEach(function (t) { head.appendChild(el('th', null, t)); });
    table.appendChild(head);
    function row(line, text) {
      var tr = el('tr');
      var fv = flat.get(line) || 0, cv = cum.get(line) || 0;
      if (fv || cv) tr.className = 'hot';
      tr.dataset.line = String(line);
      tr.appendChild(el('td', 'num', line));
      tr.appendChild(el('td', 'num', fv ? fmt(fv, unit) : ''));
      tr.appendChild(el('td', 'num', cv ? fmt(cv, unit) : ''));
      tr.appendChild(el('td', 'code', text));
      table.appendChild(tr);
    }
    var lines = Array.from(cum.keys()).sort(function (x, y) { return x - y; });
    if (src) {
      var firstLine = src[0], texts = src[1];
      texts.forEach(function (t, j) { row(firstLine + j, t); });
      lines.forEach(function (l) { if (l < firstLine || l >= firstLine + texts.length) row(l, ''); });
    } else {
      out.appendChild(el('p', 'note', D.meta.sourceEmbedded
        ? 'The source was not embedded: the file was not readable (or not a source file) when the report was made, or the size budget was spent.'
        : 'The source was not embedded (view --no-source).'));
      lines.forEach(function (l) { row(l, ''); });
    }
    out.appendChild(table);
  }

  // --- about tab ----------------------------------------------------------------------
  function renderAbout() {
    var out = $('about');
    if (out.childNodes.length) return;
    var dl = el('dl');
    function item(k, v) { dl.appendChild(el('dt', null, k)); dl.appendChild(el('dd', null, v)); }
    item('file', D.meta.title);
    D.meta.comments.forEach(function (c) { item('comment', c); });
    if (D.meta.timeNanos) item('time', new Date(D.meta.timeNanos / 1e6).toISOString());
    if (D.meta.durationNanos) item('duration', fmt(D.meta.durationNanos, 'nanoseconds'));
    if (D.meta.period) item('period', D.meta.period);
    item('sample types', types.map(function (t) { return t[0] + ' (' + t[1] + ')'; }).join(', '));
    item('size', nSamples + ' samples, ' + (N - 1) + ' call-tree nodes, ' + nFuncs + ' functions');
    out.appendChild(dl);
    out.appendChild(el('p', null, 'Made by pyproperf view. The numbers are computed in this page from the ' +
      'samples: flat is the value of the samples whose leaf is the function, cum of the samples with the ' +
      'function anywhere on the stack (once per sample), as in go tool pprof. Label filters keep (focus) or ' +
      'drop (hide) samples by exact label value.'));
  }

  // --- wiring -------------------------------------------------------------------------
  var lastKey = null;
  function update(filtersChanged) {
    var key = state.type + '|' + JSON.stringify(Array.from(state.focus).map(function (e) { return [e[0], Array.from(e[1])]; })) +
      '|' + JSON.stringify(Array.from(state.hide).map(function (e) { return [e[0], Array.from(e[1])]; }));
    if (filtersChanged || key !== lastKey || !current) {
      current = compute(state.type, null);
      lastKey = key;
    }
    writeHash();
    renderHeader();
    renderLabels();
    if (state.tab === 'flame') renderFlameTab();
    else if (state.tab === 'top') renderTop();
    else if (state.tab === 'split') renderSplit();
    else if (state.tab === 'source') renderSource();
    else renderAbout();
    document.body.dataset.ready = String(++renders);
  }
  var renders = 0;

  document.querySelectorAll('#tabs button').forEach(function (b) {
    b.addEventListener('click', function () { state.tab = b.dataset.tab; update(false); });
  });
  $('type').addEventListener('change', function (e) { state.type = +e.target.value; update(true); });
  var searchTimer = 0;
  $('search').addEventListener('input', function (e) {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () { state.q = e.target.value; updateMatches(); update(false); }, 150);
  });
  $('top-filter').addEventListener('input', function (e) { state.topq = e.target.value; renderTop(); });
  document.querySelectorAll('#top-table th').forEach(function (th) {
    th.addEventListener('click', function () { state.sort = th.dataset.sort; update(false); });
  });
  $('split-key').addEventListener('change', function (e) { state.split = e.target.value; update(false); });
  window.addEventListener('hashchange', function () { readHash(); updateMatches(); $('search').value = state.q; update(true); });
  var resizeTimer = 0;
  window.addEventListener('resize', function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { update(false); }, 100);
  });

  readHash();
  updateMatches();
  $('search').value = state.q;
  renderNotes();
  update(true);
})();
