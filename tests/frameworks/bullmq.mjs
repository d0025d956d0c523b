// BullMQ through Keyway (tests/frameworks.rs). Modes:
//   node bullmq.mjs PORT worker NAME OUTFILE TOTAL   process jobs until TOTAL are completed, then
//                                                    write the ids this worker completed to OUTFILE
//   node bullmq.mjs PORT produce TOTAL               add TOTAL jobs (addBulk), follow QueueEvents
//                                                    until all completed, check delayed and retried jobs
//   node bullmq.mjs PORT crossslot                   a queue without a hash tag: the clear error
//   node bullmq.mjs PORT features                    flows, job schedulers, the rate limiter,
//                                                    pause/resume, getWorkers, obliterate, a
//                                                    queue tagged by its name, a flow over two tags
// The queue's prefix is the hash tag `{bull}`, so every key of the queue is in one slot and
// BullMQ's Lua scripts run whole on one server. Prints `ok` last on success.
import { writeFileSync } from 'node:fs';
import { FlowProducer, Queue, QueueEvents, Worker } from 'bullmq';

const [port, mode, ...rest] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(port), maxRetriesPerRequest: null };
const prefix = '{bull}';
const name = 'jobs';
const DELAY_EVERY = 100; // jobs i % 100 == 7 are delayed by DELAY_MS
const DELAY_MS = 1000;
const RETRY_EVERY = 50; // jobs i % 50 == 3 fail their first attempt (attempts: 2)
export const result = (i) => i * 3 + 1;

function fail(msg) {
  console.log(`FAIL: ${msg}`);
  process.exit(1);
}

function spec(i) {
  const opts = { jobId: `job-${i}`, removeOnComplete: false, removeOnFail: false };
  const data = { i };
  if (i % DELAY_EVERY === 7) opts.delay = DELAY_MS;
  if (i % RETRY_EVERY === 3) {
    data.failOnce = true;
    opts.attempts = 2;
    opts.backoff = { type: 'fixed', delay: 200 };
  }
  return { name: 'square', data, opts };
}

async function worker(workerName, outFile, total) {
  const completed = [];
  let failures = 0;
  const w = new Worker(
    name,
    async (job) => {
      if (job.data.failOnce && job.attemptsMade === 0) throw new Error('first attempt fails on purpose');
      return result(job.data.i);
    },
    { connection, prefix, concurrency: 16, name: workerName },
  );
  w.on('completed', (job) => completed.push(job.id));
  w.on('failed', () => failures++);
  w.on('error', (e) => console.error(`worker ${workerName} error: ${e}`));
  const q = new Queue(name, { connection, prefix });
  const deadline = Date.now() + 150_000;
  for (;;) {
    const done = await q.getCompletedCount();
    if (done >= total) break;
    if (Date.now() > deadline) fail(`${done} of ${total} completed after 150 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
  await w.close();
  await q.close();
  writeFileSync(outFile, completed.join('\n') + '\n');
  console.log(`worker ${workerName}: completed ${completed.length}, failed attempts ${failures}`);
  console.log('ok');
}

async function produce(total) {
  const q = new Queue(name, { connection, prefix });
  const events = new QueueEvents(name, { connection, prefix });
  await events.waitUntilReady();
  let completedEvents = 0;
  let resultSum = 0;
  const allDone = new Promise((resolve) => {
    events.on('completed', ({ returnvalue }) => {
      completedEvents++;
      resultSum += Number(returnvalue);
      if (completedEvents === total) resolve();
    });
  });
  const started = Date.now();
  for (let from = 0; from < total; from += 500) {
    const batch = [];
    for (let i = from; i < Math.min(total, from + 500); i++) batch.push(spec(i));
    const jobs = await q.addBulk(batch);
    if (jobs.length !== batch.length) fail(`addBulk returned ${jobs.length} jobs for ${batch.length}`);
  }
  const timeout = setTimeout(() => fail(`${completedEvents} of ${total} completed events after 150 s`), 150_000);
  await allDone;
  clearTimeout(timeout);
  let want = 0;
  for (let i = 0; i < total; i++) want += result(i);
  if (resultSum !== want) fail(`completed events' results sum to ${resultSum}, want ${want}`);
  const counts = await q.getJobCounts('completed', 'failed', 'delayed', 'wait', 'active');
  if (counts.completed !== total || counts.failed || counts.delayed || counts.wait || counts.active)
    fail(`job counts ${JSON.stringify(counts)}`);
  // Retried jobs ran twice; delayed jobs ran no earlier than their delay.
  for (let i = 0; i < total; i++) {
    const s = spec(i);
    if (!s.opts.delay && !s.data.failOnce) continue;
    const job = await q.getJob(s.opts.jobId);
    if (!job || job.returnvalue !== result(i)) fail(`${s.opts.jobId}: returnvalue ${job && job.returnvalue}`);
    if (s.data.failOnce && job.attemptsMade !== 2) fail(`${s.opts.jobId}: attemptsMade ${job.attemptsMade}`);
    if (s.opts.delay && job.processedOn < job.timestamp + DELAY_MS)
      fail(`${s.opts.jobId}: processed ${job.processedOn - job.timestamp} ms after it was added`);
  }
  console.log(`produced ${total} jobs, ${completedEvents} completed events, result sum ${resultSum}, ${Date.now() - started} ms`);
  await events.close();
  await q.close();
  console.log('ok');
}

async function crossslot() {
  const q = new Queue('plain', { connection, prefix: 'bull' });
  try {
    await q.add('x', {});
    fail('a queue without a hash tag was accepted');
  } catch (e) {
    console.log(`error: ${e.message}`);
  }
  await q.close();
  console.log('ok');
}

async function features() {
  const q = new Queue('extra', { connection, prefix });
  const events = new QueueEvents('extra', { connection, prefix });
  const w = new Worker(
    'extra',
    async (job) => {
      if (job.name !== 'parent') return job.data.v ?? 1;
      const children = await job.getChildrenValues();
      return Object.values(children).reduce((a, b) => a + b, 0);
    },
    { connection, prefix, name: 'features-worker' },
  );
  await w.waitUntilReady();
  await events.waitUntilReady();
  // getWorkers reads CLIENT LIST: Keyway lists its own clients with their names.
  const workers = (await q.getWorkers()).map((x) => x.rawname);
  if (!workers.some((n) => n.endsWith(':w:features-worker'))) fail(`getWorkers: ${JSON.stringify(workers)}`);
  await q.pause();
  if (!(await q.isPaused())) fail('pause');
  await q.resume();
  // A flow whose queues share the tag: the parent gets its children's results.
  const flows = new FlowProducer({ connection, prefix });
  const flow = await flows.add({
    name: 'parent',
    queueName: 'extra',
    children: [
      { name: 'child', queueName: 'extra', data: { v: 2 } },
      { name: 'child', queueName: 'extra', data: { v: 5 } },
    ],
  });
  const sum = await flow.job.waitUntilFinished(events, 30_000);
  if (sum !== 7) fail(`flow parent returned ${sum}`);
  // A job scheduler (repeatable job) runs twice.
  let repeated = 0;
  const twice = new Promise((resolve) =>
    w.on('completed', (job) => {
      if (job.name === 'repeat' && ++repeated === 2) resolve();
    }),
  );
  await q.upsertJobScheduler('every-300ms', { every: 300 }, { name: 'repeat', data: { v: 9 } });
  await twice;
  await q.removeJobScheduler('every-300ms');
  // The rate limiter: 12 jobs at 5 per 500 ms take at least 1 s.
  const limited = new Queue('limited', { connection, prefix });
  const lw = new Worker('limited', async () => 1, { connection, prefix, limiter: { max: 5, duration: 500 } });
  const t0 = Date.now();
  let done = 0;
  const all = new Promise((resolve) => lw.on('completed', () => ++done === 12 && resolve()));
  await limited.addBulk(Array.from({ length: 12 }, () => ({ name: 'l', data: {} })));
  await all;
  const limitedMs = Date.now() - t0;
  if (limitedMs < 900) fail(`12 rate-limited jobs took ${limitedMs} ms`);
  await lw.close();
  await w.close();
  await limited.obliterate({ force: true });
  await q.obliterate({ force: true });
  // A queue tagged by its name rather than its prefix (one server per queue).
  const tagged = new Queue('{emails}', { connection, prefix: 'bull' });
  const tw = new Worker('{emails}', async () => 'sent', { connection, prefix: 'bull' });
  const te = new QueueEvents('{emails}', { connection, prefix: 'bull' });
  await te.waitUntilReady();
  const sent = await (await tagged.add('mail', {})).waitUntilFinished(te, 30_000);
  if (sent !== 'sent') fail(`tagged queue: ${sent}`);
  // A flow over queues of two tags cannot be one transaction on one server.
  let crossError = null;
  try {
    await flows.add({ name: 'p', queueName: 'extra', children: [{ name: 'c', queueName: 'other', prefix: '{other}' }] });
  } catch (e) {
    crossError = e.message;
  }
  if (!crossError) fail('a flow over two hash tags was accepted');
  for (const x of [tw, te, tagged, flows, events, q, limited]) await x.close();
  console.log(`features: getWorkers, pause/resume, flow (7), scheduler (2 runs), limiter (${limitedMs} ms), tagged queue name; flow over two tags: ${crossError}`);
  console.log('ok');
}

if (mode === 'features') await features();
else if (mode === 'worker') await worker(rest[0], rest[1], Number(rest[2]));
else if (mode === 'produce') await produce(Number(rest[0]));
else if (mode === 'crossslot') await crossslot();
else fail(`unknown mode ${mode}`);
