// The TypeScript `e2b` SDK against prismd: create, commands, files, kill.
// Run by crates/prismd/tests/e2b.rs with E2B_API_URL / E2B_SANDBOX_URL pointing at prismd.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import { CommandExitError, NotFoundError, Sandbox } from 'e2b'

for (const v of ['E2B_API_URL', 'E2B_SANDBOX_URL', 'E2B_API_KEY']) {
  if (!process.env[v]) throw new Error(`${v} must point the SDK at prismd (see docs/e2b.md)`)
}

test('create with metadata and envs, run commands, kill', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { lang: 'js' }, envs: { JS_VAR: 'from-create' } })
  try {
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.deepEqual(info.metadata, { lang: 'js' })

    const r = await sbx.commands.run('echo $JS_VAR $CALL; pwd', { envs: { CALL: 'per-call' }, cwd: '/tmp' })
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'from-create per-call\n/tmp\n')

    const chunks = []
    await sbx.commands.run('for i in 1 2 3; do echo $i; done', { onStdout: (d) => chunks.push(d) })
    assert.equal(chunks.join(''), '1\n2\n3\n')

    await assert.rejects(sbx.commands.run('echo no >&2; exit 5'), (e) => {
      assert.ok(e instanceof CommandExitError)
      assert.equal(e.exitCode, 5)
      assert.equal(e.stderr, 'no\n')
      return true
    })

    const bg = await sbx.commands.run('sleep 600', { background: true })
    assert.equal(await sbx.commands.kill(bg.pid), true)
    await assert.rejects(bg.wait(), CommandExitError)

    const cat = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(cat.pid, 'via stdin\n')
    await sbx.commands.closeStdin(cat.pid)
    assert.equal((await cat.wait()).stdout, 'via stdin\n')
  } finally {
    await sbx.kill()
  }
  assert.equal(await sbx.isRunning(), false)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
})

test('files: write, read, list, exists, makeDir, rename, remove', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    await sbx.files.write('/tmp/js/a.txt', 'hello from js')
    assert.equal(await sbx.files.read('/tmp/js/a.txt'), 'hello from js')
    const bytes = new Uint8Array(70_000).map((_, i) => i % 251)
    await sbx.files.write('/tmp/js/b.bin', bytes.buffer)
    const back = await sbx.files.read('/tmp/js/b.bin', { format: 'bytes' })
    assert.deepEqual(Buffer.from(back), Buffer.from(bytes))

    assert.equal(await sbx.files.makeDir('/tmp/js/sub'), true)
    const names = (await sbx.files.list('/tmp/js')).map((e) => e.name).sort()
    assert.deepEqual(names, ['a.txt', 'b.bin', 'sub'])
    assert.equal(await sbx.files.exists('/tmp/js/a.txt'), true)
    await sbx.files.rename('/tmp/js/a.txt', '/tmp/js/sub/c.txt')
    assert.equal(await sbx.files.exists('/tmp/js/a.txt'), false)
    assert.equal(await sbx.files.read('/tmp/js/sub/c.txt'), 'hello from js')
    await sbx.files.remove('/tmp/js')
    assert.equal(await sbx.files.exists('/tmp/js'), false)
    await assert.rejects(sbx.files.read('/tmp/js/nothing'), NotFoundError)
  } finally {
    await sbx.kill()
  }
})

test('list with metadata filter and pagination, setTimeout, pause and connect', async () => {
  const tag = `js-${process.pid}-${Date.now()}`
  const boxes = []
  try {
    for (let i = 0; i < 3; i++) boxes.push(await Sandbox.create({ timeoutMs: 120_000, metadata: { tag } }))
    const paginator = Sandbox.list({ query: { metadata: { tag } }, limit: 2 })
    const first = await paginator.nextItems()
    assert.equal(first.length, 2)
    assert.equal(paginator.hasNext, true)
    const second = await paginator.nextItems()
    assert.equal(paginator.hasNext, false)
    assert.deepEqual(
      [...first, ...second].map((s) => s.sandboxId).sort(),
      boxes.map((b) => b.sandboxId).sort(),
    )

    const before = (await boxes[0].getInfo()).endAt.getTime()
    await boxes[0].setTimeout(3_600_000)
    assert.ok((await boxes[0].getInfo()).endAt.getTime() - before > 3_000_000)

    await boxes[1].files.write('/root/kept.txt', 'kept')
    assert.equal(await boxes[1].pause(), true)
    assert.equal((await boxes[1].getInfo()).state, 'paused')
    const again = await Sandbox.connect(boxes[1].sandboxId)
    assert.equal(await again.files.read('/root/kept.txt'), 'kept')
  } finally {
    for (const b of boxes) await b.kill()
  }
})
