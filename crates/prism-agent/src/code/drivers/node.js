// Prism code-context driver for JavaScript (Node). Written by prism-agent into the sandbox and
// started once per context. Protocol: JSON lines over fd 0, a unix socket shared with the agent.
// Code runs with vm.Script.runInThisContext, so top-level let/const/class declarations and
// globals persist between runs (like successive <script> tags; re-declaring a let/const is an
// error). The completion value of the last statement is the result; a Promise result is awaited.
'use strict';
const vm = require('vm');
const net = require('net');
const util = require('util');
const path = require('path');
const fs = require('fs');
const os = require('os');
const { Console } = require('console');
const { Writable } = require('stream');

const sock = new net.Socket({ fd: 0, readable: true, writable: true });
const stringify = JSON.stringify;
const send = (obj) => sock.write(stringify(obj) + '\n');

function eventStream(name) {
  return new Writable({
    write(chunk, enc, cb) { send({ type: name, text: chunk.toString() }); cb(); },
  });
}
const outStream = eventStream('stdout');
const errStream = eventStream('stderr');
const userConsole = new Console({ stdout: outStream, stderr: errStream });
globalThis.console = userConsole;
for (const [name, s] of [['stdout', process.stdout], ['stderr', process.stderr]]) {
  s.write = (chunk, enc, cb) => {
    send({ type: name, text: typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString() });
    if (typeof enc === 'function') enc(); else if (typeof cb === 'function') cb();
    return true;
  };
}
globalThis.require = require;
globalThis.module = module;
globalThis.__dirname = process.cwd();
globalThis.display = (...objs) => { for (const o of objs) send({ type: 'display', data: bundle(o) }); };

const REPRS = [['text/html', '_repr_html_'], ['text/markdown', '_repr_markdown_'],
  ['image/svg+xml', '_repr_svg_'], ['image/png', '_repr_png_'], ['image/jpeg', '_repr_jpeg_'],
  ['application/json', '_repr_json_']];
function bundle(val) {
  const data = { 'text/plain': util.inspect(val, { depth: 4 }) };
  if (val !== null && (typeof val === 'object' || typeof val === 'function')) {
    for (const [mime, name] of REPRS) {
      let r;
      try { if (typeof val[name] !== 'function') continue; r = val[name](); } catch (e) { continue; }
      if (r === undefined || r === null) continue;
      if (Buffer.isBuffer(r) || r instanceof Uint8Array) r = Buffer.from(r).toString('base64');
      data[mime] = r;
    }
  }
  return data;
}

let count = 0;
let interruptHook = null;
process.on('SIGINT', () => { if (interruptHook) interruptHook(); });

function errorEvent(e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'stack' in e)) {
    const interrupted = /interrupted by `SIGINT`/.test(String(e.message));
    return { type: 'error', name: interrupted ? 'Interrupted' : (e.name || 'Error'),
      value: String(e.message), traceback: String(e.stack || e) };
  }
  return { type: 'error', name: 'Error', value: util.inspect(e), traceback: util.inspect(e) };
}

// Awaits a promise, giving up when SIGINT arrives.
function settle(p) {
  return new Promise((resolve, reject) => {
    interruptHook = () => reject(Object.assign(new Error('Script execution was interrupted by `SIGINT`'), { name: 'Interrupted' }));
    Promise.resolve(p).then(resolve, reject);
  }).finally(() => { interruptHook = null; });
}

async function run(code) {
  count += 1;
  const filename = `<cell-${count}>`;
  let value;
  try {
    const script = new vm.Script(code, { filename });
    value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  } catch (e) {
    if (e instanceof SyntaxError && /await/.test(code) && /await is only valid|Unexpected reserved word/.test(e.message)) {
      // Top-level await: run the cell as an async function body (its declarations stay local).
      try {
        value = await settle(new vm.Script(`(async () => {\n${code}\n})()`, { filename }).runInThisContext({ breakOnSigint: true }));
      } catch (e2) { send(errorEvent(e2)); return 'error'; }
      value = undefined;
    } else { send(errorEvent(e)); return 'error'; }
  }
  try {
    if (value && typeof value.then === 'function') value = await settle(value);
  } catch (e) { send(errorEvent(e)); return 'error'; }
  if (value !== undefined) { globalThis._ = value; send({ type: 'result', data: bundle(value) }); }
  return 'ok';
}

async function invoke(msg) {
  const handler = msg.handler || 'handler';
  if (!/^[A-Za-z_$][\w$]*$/.test(handler)) {
    send({ type: 'error', name: 'TypeError', value: 'handler must be an identifier', traceback: '' });
    return 'error';
  }
  try {
    let fn;
    let code = msg.code || '';
    let file = msg.path ? path.resolve(msg.path) : path.join(os.tmpdir(), `prism-handler-${process.pid}.js`);
    if (msg.path) code = fs.readFileSync(file, 'utf8');
    if (/^\s*export\s/m.test(code) || file.endsWith('.mjs')) {
      if (!msg.path) { file = file.replace(/\.js$/, '.mjs'); fs.writeFileSync(file, code); }
      const mod = await import(require('url').pathToFileURL(file).href + `?t=${Date.now()}`);
      fn = mod[handler] || (mod.default && mod.default[handler]);
    } else {
      const m = { exports: {} };
      const wrapper = `(function (exports, require, module, __filename, __dirname) {${code}\n;return typeof ${handler} !== 'undefined' ? ${handler} : module.exports.${handler};\n})`;
      fn = vm.runInThisContext(wrapper, { filename: file })(m.exports, require, m, file, path.dirname(file));
    }
    if (typeof fn !== 'function') throw new ReferenceError(`no function ${handler} defined`);
    const result = await settle(fn(msg.event));
    const json = stringify(result === undefined ? null : result);
    send({ type: 'result', data: { 'application/json': JSON.parse(json), 'text/plain': util.inspect(result) } });
    return 'ok';
  } catch (e) { send(errorEvent(e)); return 'error'; }
}

// Runs fn() with env in process.env (so also in the processes it starts), then puts back what
// was there before (or deletes the names that were not set).
async function withEnv(env, fn) {
  const saved = Object.keys(env || {}).map((k) => [k, Object.prototype.hasOwnProperty.call(process.env, k) ? process.env[k] : undefined]);
  for (const [k] of saved) process.env[k] = String(env[k]);
  try { return await fn(); } finally {
    for (const [k, v] of saved) { if (v === undefined) delete process.env[k]; else process.env[k] = v; }
  }
}
let queue = Promise.resolve();
let buf = '';
sock.on('data', (chunk) => {
  buf += chunk.toString();
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    queue = queue.then(async () => {
      let status = 'error';
      try {
        const msg = JSON.parse(line);
        if (msg.type === 'run') status = await withEnv(msg.env, () => run(msg.code || ''));
        else if (msg.type === 'invoke') status = await invoke(msg);
        else send({ type: 'error', name: 'ProtocolError', value: `unknown command ${msg.type}`, traceback: '' });
      } catch (e) { send(errorEvent(e)); }
      send({ type: 'end', status, execution_count: count });
    });
  }
});
sock.on('end', () => process.exit(0));
process.on('uncaughtException', (e) => send({ type: 'stderr', text: `Uncaught ${e && e.stack || e}\n` }));
process.on('unhandledRejection', (e) => send({ type: 'stderr', text: `Unhandled rejection: ${e && e.stack || e}\n` }));
send({ type: 'ready', pid: process.pid });
