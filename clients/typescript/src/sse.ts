/**
 * Server-Sent Events from `watch()`, for web route handlers (Next.js App Router,
 * Remix, Hono, plain `Request`/`Response` servers) that stream a job's progress to a
 * browser's EventSource.
 *
 * Wire format, one SSE message per job event:
 *
 *     retry: 2000
 *
 *     id: 7                    <- the event's sequence (EventSource's Last-Event-ID)
 *     event: job
 *     data: {"sequence":"7","kind":"EVENT_KIND_PROGRESS","job":{...}}
 *
 *     event: end               <- after the terminal event: call source.close()
 *     data: {"state":"JOB_STATE_SUCCEEDED"}
 *
 *     event: rpc-error         <- the stream failed after it started
 *     data: {"code":"UNAVAILABLE","message":"..."}
 *
 * plus `: keep-alive` comments while nothing happens. A browser that reconnects sends
 * Last-Event-ID, which becomes `afterSequence`, so it misses no event.
 */

import { toJson, type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import { JobEventSchema, JobSchema, JobState, type Job, type JobEvent } from "./gen/jobcontrol/v1/job_pb.js";

/** The part of the client these helpers use (so a test double is easy to write). */
export interface JobWatcher {
  watch(
    jobId: string,
    options?: { afterSequence?: bigint | number | string; signal?: AbortSignal },
  ): AsyncIterable<JobEvent>;
}

/**
 * A job event as proto3 JSON for a browser: lowerCamelCase fields, enum names
 * ("JOB_STATE_RUNNING"), int64 as strings, timestamps as RFC 3339, and every field
 * present (progress.percent is 0, not missing).
 */
export function eventToJson(event: JobEvent): JsonObject {
  return toJson(JobEventSchema, event, { alwaysEmitImplicit: true }) as JsonObject;
}

/** A job as proto3 JSON (see eventToJson). */
export function jobToJson(job: Job): JsonObject {
  return toJson(JobSchema, job, { alwaysEmitImplicit: true }) as JsonObject;
}

/** "NOT_FOUND" for Code.NotFound: the gRPC name of a status code. */
export function grpcCodeName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The HTTP status a web route should answer for a gRPC error code. */
export function httpStatusFromCode(code: Code): number {
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return 400;
    case Code.Unauthenticated:
      return 401;
    case Code.PermissionDenied:
      return 403;
    case Code.NotFound:
      return 404;
    case Code.AlreadyExists:
    case Code.Aborted:
    case Code.FailedPrecondition:
      return 409;
    case Code.ResourceExhausted:
      return 429;
    case Code.Canceled:
      return 499;
    case Code.Unimplemented:
      return 501;
    case Code.Unavailable:
      return 503;
    case Code.DeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

/** `{ code: "NOT_FOUND", message: "job … not found" }` for any error. */
export function errorToJson(error: unknown): { code: string; message: string } {
  const connectError = ConnectError.from(error);
  return { code: grpcCodeName(connectError.code), message: connectError.rawMessage };
}

/** A JSON error Response with the HTTP status matching the gRPC code. */
export function errorResponse(error: unknown, init: ResponseInit = {}): Response {
  const connectError = ConnectError.from(error);
  const headers = new Headers(init.headers);
  headers.set("content-type", "application/json; charset=utf-8");
  return new Response(JSON.stringify(errorToJson(connectError)), {
    ...init,
    status: httpStatusFromCode(connectError.code),
    headers,
  });
}

export interface JobEventsResponseOptions {
  /** The request's Last-Event-ID header (EventSource sends it on reconnect). */
  lastEventId?: string | null;
  /** Resume after this sequence (used when there is no Last-Event-ID). */
  afterSequence?: bigint | number | string;
  /** The request's AbortSignal: the gRPC stream ends when the browser goes away. */
  signal?: AbortSignal;
  /** How often to send a `: keep-alive` comment while nothing happens (ms; 0: never). */
  keepAliveMs?: number;
  /** The `retry:` reconnect delay suggested to EventSource (ms). */
  retryMs?: number;
  /** How each event becomes the `data:` of an SSE message (default eventToJson). */
  serialize?: (event: JobEvent) => unknown;
  /** More response headers. */
  headers?: ConstructorParameters<typeof Headers>[0];
}

const encoder = new TextEncoder();

function sseMessage(event: string, data: unknown, id?: string): Uint8Array {
  const idLine = id === undefined ? "" : `id: ${id}\n`;
  return encoder.encode(`${idLine}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

function sequenceFrom(options: JobEventsResponseOptions): string | bigint | number | undefined {
  const lastEventId = options.lastEventId?.trim();
  if (lastEventId !== undefined && /^\d+$/.test(lastEventId)) {
    return lastEventId;
  }
  return options.afterSequence;
}

/**
 * Starts watching a job and answers with a `text/event-stream` Response of its events.
 *
 * It waits for the first event before answering, so a malformed id is a 400, an unknown
 * one a 404 and an unreachable server a 503 (JSON `{code, message}`), not an event
 * stream that fails at once.
 */
export async function jobEventsResponse(
  client: JobWatcher,
  jobId: string,
  options: JobEventsResponseOptions = {},
): Promise<Response> {
  const abort = new AbortController();
  const onRequestAbort = () => abort.abort(options.signal?.reason);
  if (options.signal?.aborted) {
    abort.abort(options.signal.reason);
  } else {
    options.signal?.addEventListener("abort", onRequestAbort, { once: true });
  }
  const serialize = options.serialize ?? eventToJson;
  const iterator = client
    .watch(jobId, { afterSequence: sequenceFrom(options), signal: abort.signal })
    [Symbol.asyncIterator]();

  let pending: IteratorResult<JobEvent> | undefined;
  try {
    pending = await iterator.next();
  } catch (error) {
    options.signal?.removeEventListener("abort", onRequestAbort);
    abort.abort();
    return errorResponse(error);
  }

  let lastState: JobState | undefined;
  let keepAlive: ReturnType<typeof setInterval> | undefined;
  const finish = () => {
    clearInterval(keepAlive);
    options.signal?.removeEventListener("abort", onRequestAbort);
  };
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode(`retry: ${options.retryMs ?? 2000}\n\n`));
      const keepAliveMs = options.keepAliveMs ?? 15_000;
      if (keepAliveMs > 0) {
        keepAlive = setInterval(() => {
          try {
            controller.enqueue(encoder.encode(": keep-alive\n\n"));
          } catch {
            clearInterval(keepAlive);
          }
        }, keepAliveMs);
      }
    },
    async pull(controller) {
      let next: IteratorResult<JobEvent>;
      try {
        next = pending ?? (await iterator.next());
        pending = undefined;
      } catch (error) {
        finish();
        try {
          if (!abort.signal.aborted) {
            controller.enqueue(sseMessage("rpc-error", errorToJson(error)));
          }
          controller.close();
        } catch {
          // Already cancelled by the reader.
        }
        return;
      }
      if (next.done) {
        finish();
        const state = lastState === undefined ? "" : `JOB_STATE_${JobState[lastState]}`;
        controller.enqueue(sseMessage("end", { state }));
        controller.close();
        return;
      }
      lastState = next.value.job?.state;
      controller.enqueue(sseMessage("job", serialize(next.value), next.value.sequence.toString()));
    },
    cancel() {
      // The browser went away: end the gRPC stream.
      finish();
      abort.abort();
    },
  });

  const headers = new Headers(options.headers);
  headers.set("content-type", "text/event-stream; charset=utf-8");
  headers.set("cache-control", "no-cache, no-transform");
  headers.set("x-accel-buffering", "no"); // nginx: don't buffer the stream
  return new Response(body, { status: 200, headers });
}
