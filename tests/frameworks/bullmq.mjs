// BullMQ through Keyway (tests/frameworks.rs). Modes:
//   node bullmq.mjs PORT worker NAME OUTFILE TOTAL   process jobs until TOTAL are completed, then
//                                                    write the ids this worker completed to OUTFILE
//   node bullmq.mjs PORT produce TOTAL               add TOTAL jobs (addBulk), follow QueueEvents
//                                                    until all completed, check delayed and retried jobs
//   node bullmq.mjs PORT crossslot                   a queue without a hash tag: the clear error
// The queue's prefix is the hash tag `{bull}`, so every key of the queue is in one slot and
// BullMQ's Lua scripts run whole on one server. Prints `ok` last on success.
import { writeFileSync } from 'node:fs';
import { Queue, QueueEvents, Worker } from 'bullmq';

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

if (mode === 'worker') await worker(rest[0], rest[1], Number(rest[2]));
else if (mode === 'produce') await produce(Number(rest[0]));
else if (mode === 'crossslot') await crossslot();
else fail(`unknown mode ${mode}`);
