// End-to-end test of the TypeScript client against a real jobcontrol server.
//
// Build first (`npm run build`), then run `node --test test/*.test.mjs` in clients/typescript
// (tests/clients/test_typescript_client.py does both). Each suite starts its own
// `jobcontrol-server --with-worker` from the repository's .venv on a free port and
// stops it afterwards.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  Code,
  ConnectError,
  EventKind,
  JobState,
  createJobControlClient,
  eventKindName,
  fieldViolations,
  isTerminalState,
  jobEventsResponse,
  jobStateName,
} from "../dist/index.js";

const REPO_ROOT = resolve(fileURLToPath(new URL("../../..", import.meta.url)));
const SERVER_BIN =
  process.env.JOBCONTROL_SERVER_BIN ?? join(REPO_ROOT, ".venv", "bin", "jobcontrol-server");
const UNKNOWN_ID = "01a22000-0000-7000-8000-000000000000";

/** Starts `jobcontrol-server --with-worker` on 127.0.0.1:0; resolves once it listens. */
async function startServer({ env: extraEnv = {}, args = [] } = {}) {
  assert.ok(existsSync(SERVER_BIN), `${SERVER_BIN} is missing: run \`make install\` first`);
  const dir = mkdtempSync(join(tmpdir(), "jobcontrol-ts-"));
  const env = { ...process.env, ...extraEnv };
  // A clean, local, unauthenticated server unless the suite asks otherwise.
  for (const name of ["JOBCONTROL_AUTH_TOKEN", "JOBCONTROL_AUTH_TOKENS_FILE", "JOB_STORE_BACKEND"]) {
    if (!(name in extraEnv)) delete env[name];
  }
  const child = spawn(
    SERVER_BIN,
    ["--listen", "127.0.0.1:0", "--store-path", join(dir, "jobs.db"), "--with-worker", ...args],
    { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] },
  );
  // Last resort if this process dies without running the `after` hooks.
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  child.once("exit", () => process.removeListener("exit", killOnExit));
  let log = "";
  const address = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`server did not listen within 30s:\n${log}`)),
      30_000,
    );
    const onData = (chunk) => {
      log += chunk.toString();
      const found = /listening on (\S+):(\d+)/.exec(log);
      if (found) {
        clearTimeout(timer);
        resolvePromise(`${found[1]}:${found[2]}`);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${log}`));
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  return {
    address,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Collects the events of watch(), failing instead of hanging past `ms`. */
async function collect(client, jobId, { afterSequence, ms = 30_000, onEvent } = {}) {
  const events = [];
  for await (const event of client.watch(jobId, { afterSequence, signal: AbortSignal.timeout(ms) })) {
    events.push(event);
    await onEvent?.(event);
  }
  return events;
}

function describeEvents(events) {
  return events
    .map((e) => `${e.sequence} ${eventKindName(e.kind)} ${jobStateName(e.job.state)} ${e.job.progress?.percent ?? "-"}`)
    .join("\n");
}

async function rejectsWith(promise, code) {
  const error = await promise.then(
    () => assert.fail(`expected ${Code[code]}, the call succeeded`),
    (e) => e,
  );
  assert.ok(error instanceof ConnectError, `expected a ConnectError, got ${error}`);
  assert.equal(Code[error.code], Code[code], error.message);
  assert.ok(error.rawMessage.length > 0, "the error has a message");
  return error;
}

describe("jobcontrol TypeScript client", () => {
  let server;
  let client;

  before(async () => {
    server = await startServer();
    client = createJobControlClient({ address: server.address, defaultTimeoutMs: 15_000 });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("submit and watch demo.sleep to SUCCEEDED", { timeout: 60_000 }, async () => {
    const job = await client.submit("demo.sleep", { seconds: 0.8, steps: 8 }, { labels: { suite: "ts" } });
    assert.match(job.id, /^[0-9a-f-]{36}$/);
    assert.equal(job.type, "demo.sleep");
    assert.equal(job.state, JobState.PENDING);
    assert.deepEqual(job.payload, { seconds: 0.8, steps: 8 });
    assert.equal(job.labels.suite, "ts");

    const events = await collect(client, job.id);
    const trace = describeEvents(events);
    assert.ok(events.length >= 2, trace);
    assert.equal(events[0].kind, EventKind.SNAPSHOT, trace);
    const last = events.at(-1);
    assert.equal(last.kind, EventKind.SUCCEEDED, trace);
    assert.equal(last.job.state, JobState.SUCCEEDED, trace);
    assert.equal(last.job.progress.percent, 100, trace);
    assert.deepEqual(last.job.result?.steps, 8, trace);
    // Only the final event is terminal, progress never goes back, sequences grow.
    for (const event of events.slice(0, -1)) {
      assert.ok(!isTerminalState(event.job.state), trace);
    }
    let percent = -1;
    let sequence = -1n;
    for (const event of events) {
      assert.equal(event.job.id, job.id);
      const p = event.job.progress?.percent ?? 0;
      assert.ok(p >= percent, `progress went from ${percent} to ${p}:\n${trace}`);
      percent = p;
      assert.equal(typeof event.sequence, "bigint");
      assert.ok(event.sequence >= sequence, `sequence went back:\n${trace}`);
      sequence = event.sequence;
    }

    const fetched = await client.get(job.id);
    assert.equal(fetched.state, JobState.SUCCEEDED);
    assert.equal(fetched.id, job.id);

    // Resuming after a sequence replays only what came later, and still ends.
    const resumeAfter = events[0].sequence;
    const replay = await collect(client, job.id, { afterSequence: resumeAfter });
    assert.ok(replay.length >= 1);
    assert.ok(replay.every((e) => e.sequence > resumeAfter), describeEvents(replay));
    assert.equal(replay.at(-1).kind, EventKind.SUCCEEDED, describeEvents(replay));
    // From 0 it is the whole history, submission to success.
    const history = await collect(client, job.id, { afterSequence: 0 });
    assert.deepEqual(
      [history[0].kind, history[1].kind, history.at(-1).kind],
      [EventKind.SUBMITTED, EventKind.STARTED, EventKind.SUCCEEDED],
      describeEvents(history),
    );

    // A watch of a finished job is just its snapshot.
    const again = await collect(client, job.id);
    assert.equal(again.length, 1, describeEvents(again));
    assert.equal(again[0].job.state, JobState.SUCCEEDED);

    // Cancelling a finished job is a precondition failure.
    await rejectsWith(client.cancel(job.id, "too late"), Code.FailedPrecondition);
  });

  test("cancel a running demo.sleep and see CANCELLED", { timeout: 60_000 }, async () => {
    const job = await client.submit("demo.sleep", { seconds: 600, steps: 600 });
    let cancelled;
    const events = await collect(client, job.id, {
      onEvent: async (event) => {
        if (cancelled === undefined && event.job.state === JobState.RUNNING) {
          cancelled = await client.cancel(job.id, "ts client test");
        }
      },
    });
    const trace = describeEvents(events);
    assert.ok(cancelled, `the job never ran:\n${trace}`);
    assert.ok(
      cancelled.cancelRequested || cancelled.state === JobState.CANCELLED,
      jobStateName(cancelled.state),
    );
    const last = events.at(-1);
    assert.equal(last.kind, EventKind.CANCELLED, trace);
    assert.equal(last.job.state, JobState.CANCELLED, trace);
    assert.equal(last.job.cancelReason, "ts client test");
    assert.equal((await client.get(job.id)).state, JobState.CANCELLED);
  });

  test("cancel a pending (delayed) job at once", { timeout: 30_000 }, async () => {
    const job = await client.submit(
      "demo.sleep",
      { seconds: 0 },
      { delayMs: 3_600_000, priority: 5, maxAttempts: 2, timeoutMs: 60_000 },
    );
    assert.equal(job.state, JobState.PENDING);
    assert.equal(job.priority, 5);
    assert.equal(job.maxAttempts, 2);
    const cancelled = await client.cancel(job.id);
    assert.equal(cancelled.state, JobState.CANCELLED);
    const events = await collect(client, job.id);
    assert.equal(events.at(-1).job.state, JobState.CANCELLED);
    // Cancelling again returns the job unchanged.
    assert.equal((await client.cancel(job.id)).state, JobState.CANCELLED);
  });

  test("errors carry the gRPC code and message", { timeout: 30_000 }, async () => {
    const notFound = await rejectsWith(client.get(UNKNOWN_ID), Code.NotFound);
    assert.match(notFound.rawMessage, /not found/i);

    const malformed = await rejectsWith(client.get("not-a-uuid"), Code.InvalidArgument);
    assert.deepEqual(
      fieldViolations(malformed).map((v) => v.field),
      ["job_id"],
    );
    await rejectsWith(client.cancel(UNKNOWN_ID), Code.NotFound);
    await rejectsWith(client.submit("not a type!", {}), Code.InvalidArgument);
    await rejectsWith(client.submit("demo.sleep", {}, { priority: 5000 }), Code.InvalidArgument);

    // A stream fails the same way, before yielding anything.
    await rejectsWith(collect(client, UNKNOWN_ID), Code.NotFound);
    await rejectsWith(collect(client, "not-a-uuid"), Code.InvalidArgument);
    await rejectsWith(collect(client, UNKNOWN_ID, { afterSequence: "x" }), Code.InvalidArgument);

    // Nothing listening: UNAVAILABLE (retryable), for calls and streams alike.
    const port = await new Promise((resolvePort) => {
      const probe = createServer().listen(0, "127.0.0.1", () => {
        const { port: free } = probe.address();
        probe.close(() => resolvePort(free));
      });
    });
    const offline = createJobControlClient({ address: `127.0.0.1:${port}` });
    try {
      await rejectsWith(offline.get(UNKNOWN_ID), Code.Unavailable);
      await rejectsWith(collect(offline, UNKNOWN_ID), Code.Unavailable);
    } finally {
      offline.close();
    }
  });
});

/** Parses a text/event-stream body into [{ id, event, data }] (data JSON-decoded). */
function parseSse(text) {
  const messages = [];
  for (const block of text.split("\n\n")) {
    const message = {};
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = line.slice(0, colon);
      const value = line.slice(colon + 1).replace(/^ /, "");
      message[field] = field === "data" ? JSON.parse(value) : value;
    }
    if (message.event !== undefined) messages.push(message);
  }
  return messages;
}

describe("Server-Sent Events for a web route", () => {
  let server;
  let client;
  // The README's Next.js route handler (app/api/jobs/[id]/events/route.ts), with `client` for `jobs`.
  async function GET(request, { params }) {
    const { id } = await params;
    return jobEventsResponse(client, id, {
      lastEventId: request.headers.get("last-event-id"),
      signal: request.signal,
    });
  }
  const call = (id, headers = {}, signal = undefined) =>
    GET(new Request(`http://localhost/api/jobs/${id}/events`, { headers, signal }), {
      params: Promise.resolve({ id }),
    });

  before(async () => {
    server = await startServer();
    client = createJobControlClient({ address: server.address });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("streams a job to the end as SSE, and resumes from Last-Event-ID", { timeout: 60_000 }, async () => {
    const job = await client.submit("demo.sleep", { seconds: 0.8, steps: 4 });
    const response = await call(job.id);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type"), /^text\/event-stream/);
    const text = await response.text();
    const messages = parseSse(text);
    const jobs = messages.filter((m) => m.event === "job");
    assert.ok(jobs.length >= 2, text);
    assert.deepEqual(messages.at(-1), { event: "end", data: { state: "JOB_STATE_SUCCEEDED" } }, text);
    assert.equal(jobs[0].data.kind, "EVENT_KIND_SNAPSHOT", text);
    assert.equal(jobs.at(-1).data.kind, "EVENT_KIND_SUCCEEDED", text);
    assert.equal(jobs.at(-1).data.job.state, "JOB_STATE_SUCCEEDED", text);
    let percent = -1;
    for (const message of jobs) {
      assert.equal(message.id, message.data.sequence, text);
      assert.equal(message.data.job.id, job.id);
      assert.ok(message.data.job.progress.percent >= percent, text);
      percent = message.data.job.progress.percent;
    }
    assert.equal(percent, 100);

    const resumed = parseSse(await (await call(job.id, { "last-event-id": jobs[0].id })).text());
    assert.ok(resumed.length >= 2, JSON.stringify(resumed));
    for (const message of resumed.filter((m) => m.event === "job")) {
      assert.ok(BigInt(message.id) > BigInt(jobs[0].id), JSON.stringify(resumed));
    }
    assert.equal(resumed.at(-2).data.kind, "EVENT_KIND_SUCCEEDED", JSON.stringify(resumed));
    assert.equal(resumed.at(-1).data.state, "JOB_STATE_SUCCEEDED");
  });

  test("unknown and malformed ids are HTTP errors, not streams", { timeout: 30_000 }, async () => {
    const missing = await call(UNKNOWN_ID);
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).code, "NOT_FOUND");
    const malformed = await call("not-a-uuid");
    assert.equal(malformed.status, 400);
    const body = await malformed.json();
    assert.equal(body.code, "INVALID_ARGUMENT");
    assert.match(body.message, /job_id/);
  });

  test("a browser that goes away ends the stream", { timeout: 30_000 }, async () => {
    const job = await client.submit("demo.sleep", { seconds: 600, steps: 600 });
    const openFirstEvent = async (response) => {
      assert.equal(response.status, 200);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let text = "";
      while (!text.includes("event: job")) {
        const { value, done } = await reader.read();
        assert.ok(!done, text);
        text += decoder.decode(value);
      }
      return reader;
    };
    // Spy on the signal the helper gives watch().
    const signals = [];
    const spy = {
      watch: (id, options) => {
        signals.push(options.signal);
        return client.watch(id, options);
      },
    };
    // The request is aborted (the browser closed the tab) ...
    const request = new AbortController();
    await openFirstEvent(await jobEventsResponse(spy, job.id, { signal: request.signal }));
    assert.equal(signals[0].aborted, false);
    request.abort();
    assert.equal(signals[0].aborted, true);
    // ... or the response body is cancelled (the framework noticed first).
    const reader = await openFirstEvent(await jobEventsResponse(spy, job.id));
    await reader.cancel();
    assert.equal(signals[1].aborted, true);
    const cancelled = await client.cancel(job.id, "cleanup");
    assert.ok(cancelled.cancelRequested || cancelled.state === JobState.CANCELLED);
    const events = await collect(client, job.id);
    assert.equal(events.at(-1).job.state, JobState.CANCELLED);
  });
});

describe("jobcontrol TypeScript client with a token", () => {
  const TOKEN = "ts-client-test-token";
  let server;

  before(async () => {
    server = await startServer({ env: { JOBCONTROL_AUTH_TOKEN: TOKEN } });
  });

  after(async () => {
    await server?.stop();
  });

  test("sends the bearer token; no token is UNAUTHENTICATED", { timeout: 30_000 }, async () => {
    const anonymous = createJobControlClient({ address: server.address });
    const wrong = createJobControlClient({ address: server.address, token: "wrong" });
    const authed = createJobControlClient({ address: `http://${server.address}`, token: TOKEN });
    try {
      await rejectsWith(anonymous.get(UNKNOWN_ID), Code.Unauthenticated);
      await rejectsWith(wrong.get(UNKNOWN_ID), Code.Unauthenticated);
      await rejectsWith(authed.get(UNKNOWN_ID), Code.NotFound);
      const job = await authed.submit("demo.sleep", { seconds: 0, steps: 0 });
      const events = await collect(authed, job.id);
      assert.equal(events.at(-1).job.state, JobState.SUCCEEDED, describeEvents(events));
    } finally {
      anonymous.close();
      wrong.close();
      authed.close();
    }
  });
});

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl CLI). */
function makeCerts(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
    "-subj", "/CN=jobcontrol ts test ca",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  const leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n";
  const issue = (name, cn, extensions) => {
    writeFileSync(join(dir, `${name}.ext`), leaf + extensions);
    openssl("req", "-new", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`);
    openssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
      "-set_serial", String(Date.now()), "-days", "2", "-sha256",
      "-extfile", `${name}.ext`, "-out", `${name}.pem`);
  };
  issue("server", "localhost", "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n");
  issue("client", "ts client", "extendedKeyUsage=clientAuth\n");
  const read = (file) => readFileSync(join(dir, file));
  return {
    paths: { cert: join(dir, "server.pem"), key: join(dir, "server.key"), ca: join(dir, "ca.pem") },
    ca: read("ca.pem"),
    cert: read("client.pem"),
    key: read("client.key"),
  };
}

describe("jobcontrol TypeScript client over mTLS", () => {
  let server;
  let certs;
  let certDir;

  before(async () => {
    certDir = mkdtempSync(join(tmpdir(), "jobcontrol-ts-certs-"));
    certs = makeCerts(certDir);
    server = await startServer({
      args: ["--tls-cert", certs.paths.cert, "--tls-key", certs.paths.key, "--tls-client-ca", certs.paths.ca],
    });
  });

  after(async () => {
    await server?.stop();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  });

  test("tls options: trusted CA plus client certificate", { timeout: 30_000 }, async () => {
    const port = server.address.split(":").at(-1);
    const trusted = createJobControlClient({
      address: server.address,
      tls: { ca: certs.ca, cert: certs.cert, key: certs.key },
    });
    const byName = createJobControlClient({
      address: `https://localhost:${port}`,
      tls: { ca: certs.ca, cert: certs.cert, key: certs.key },
    });
    const noClientCert = createJobControlClient({ address: server.address, tls: { ca: certs.ca } });
    const untrusted = createJobControlClient({ address: server.address, tls: true });
    const plaintext = createJobControlClient({ address: server.address });
    try {
      await rejectsWith(trusted.get(UNKNOWN_ID), Code.NotFound);
      await rejectsWith(byName.get(UNKNOWN_ID), Code.NotFound);
      const job = await trusted.submit("demo.sleep", { seconds: 0, steps: 1 });
      const events = await collect(trusted, job.id);
      assert.equal(events.at(-1).job.state, JobState.SUCCEEDED, describeEvents(events));
      for (const refused of [noClientCert, untrusted, plaintext]) {
        const error = await refused.get(UNKNOWN_ID, { timeoutMs: 5_000 }).then(
          () => assert.fail("a client the server must refuse was served"),
          (e) => e,
        );
        assert.ok(error instanceof ConnectError, String(error));
        assert.notEqual(error.code, Code.NotFound, error.message);
      }
    } finally {
      for (const c of [trusted, byName, noClientCert, untrusted, plaintext]) c.close();
    }
  });
});
