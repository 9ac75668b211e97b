// Read a profile file with speedscope's own importer (the npm package's
// bundle), and print what it imported as JSON, for tests/test_convert.py:
//   node read_speedscope.mjs SPEEDSCOPE_BUNDLE_DIR FILE
// Output: {"name", "profiles": [{"name", "unit", "total",
//          "frames": [{"name", "file", "line", "self", "total"}]}]}
// speedscope ships only a browser bundle; its importer module
// (importProfileGroupFromText, which detects the format as the app does) is
// reached by running the bundle in a node:vm context with just enough of a
// browser stubbed for it to load.  Any failure exits non-zero.
import fs from 'node:fs'
import path from 'node:path'
import vm from 'node:vm'

const [dir, file] = process.argv.slice(2)
if (!dir || !file) {
  console.error('usage: node read_speedscope.mjs SPEEDSCOPE_RELEASE_DIR FILE')
  process.exit(2)
}
const bundles = fs.readdirSync(dir).filter(n => /^speedscope-.*\.js$/.test(n))
if (bundles.length !== 1) throw new Error(`expected one speedscope-*.js in ${dir}, found ${bundles}`)
let src = fs.readFileSync(path.join(dir, bundles[0]), 'utf8')

// The importer module: `X(kf,{importFromFileSystemDirectoryEntry:..., importProfileGroupFromText:...})`
// and its lazy initialisation `var jr=Promise.resolve().then(()=>(Sf(),kf));`.
const exportsMatch = /[\w$]+\(([\w$]+),\{importFromFileSystemDirectoryEntry:/.exec(src)
if (!exportsMatch) throw new Error('speedscope bundle: importer module not found')
const esc = s => s.replace(/\$/g, '\\$')
const init = new RegExp(
  `var ([\\w$]+)=Promise\\.resolve\\(\\)\\.then\\(\\(\\)=>\\([\\w$]+\\(\\),${esc(exportsMatch[1])}\\)\\);`,
).exec(src)
if (!init) throw new Error('speedscope bundle: importer initialisation not found')
const at = init.index + init[0].length
src = src.slice(0, at) + `globalThis.__speedscopeImporter=${init[1]};` + src.slice(at)

// A browser that answers everything with a callable no-op, for the UI code
// that runs when the bundle loads (it is not what is tested).
function stub() {
  const f = function () { return stub() }
  return new Proxy(f, {
    get(_t, p) {
      if (p === Symbol.toPrimitive) return () => ''
      if (p === 'then') return undefined
      return stub()
    },
    set() { return true },
    construct() { return stub() },
  })
}
const ctx = {
  console: { log() {}, info() {}, warn() {}, error() {}, time() {}, timeEnd() {} },
  setTimeout, clearTimeout, TextDecoder, TextEncoder, URL, atob, btoa, performance,
  Blob: globalThis.Blob, Uint8Array, ArrayBuffer, DataView,
  document: stub(), navigator: { userAgent: 'node', platform: 'node' },
  location: { href: 'file:///', hash: '', search: '', protocol: 'file:' },
  addEventListener() {}, removeEventListener() {}, requestAnimationFrame: () => 0,
  localStorage: { getItem: () => null, setItem() {} },
}
ctx.window = ctx
ctx.self = ctx
vm.createContext(ctx)
try {
  vm.runInContext(src, ctx)
} catch (e) {
  // The UI's start-up may fail on the stubs; the importer does not need it.
}
const importer = await ctx.__speedscopeImporter
if (typeof importer?.importProfileGroupFromText !== 'function') {
  throw new Error('speedscope bundle: importProfileGroupFromText not found')
}
const text = fs.readFileSync(file, 'utf8')
const group = await importer.importProfileGroupFromText(path.basename(file), text)
if (!group) throw new Error(`speedscope could not import ${file}`)
const out = { name: group.name, profiles: [] }
for (const p of group.profiles) {
  const frames = []
  p.forEachFrame(f => {
    frames.push({
      name: f.name, file: f.file ?? null, line: f.line ?? null,
      self: f.getSelfWeight(), total: f.getTotalWeight(),
    })
  })
  out.profiles.push({ name: p.getName(), unit: p.getWeightUnit(), total: p.getTotalWeight(), frames })
}
process.stdout.write(JSON.stringify(out) + '\n')
