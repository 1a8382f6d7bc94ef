/**
 * A small typed client for the jobcontrol gRPC service (jobcontrol.v1.JobControl).
 *
 * It speaks real gRPC over HTTP/2 (plaintext h2c, or TLS) through Connect's Node
 * transport, so it talks to the Python grpcio server as any gRPC client does. The
 * messages and the service descriptor are generated from protos/ by protoc-gen-es
 * (src/gen/, see buf.gen.yaml at the repository root).
 *
 * Errors are ConnectError values: `err.code` is the gRPC status code (`Code.NotFound`,
 * `Code.InvalidArgument`, ...) and `err.rawMessage` the server's message.
 */

import type { JsonObject } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { SecureClientSessionOptions } from "node:http2";

import { JobControl } from "./gen/jobcontrol/v1/job_control_pb.js";
import { EventKind, JobState, type Job, type JobEvent } from "./gen/jobcontrol/v1/job_pb.js";

export { Code, ConnectError } from "@connectrpc/connect";
export type { JsonObject, JsonValue } from "@bufbuild/protobuf";
export { timestampDate, durationMs } from "@bufbuild/protobuf/wkt";
export * from "./gen/jobcontrol/v1/job_pb.js";
export * from "./gen/jobcontrol/v1/job_control_pb.js";

/** TLS settings: `true` for TLS with the system's trusted CAs, or Node's TLS options. */
export type TlsOptions =
  | boolean
  | {
      /** PEM CA bundle to trust instead of the system's (for a private CA). */
      ca?: string | Buffer;
      /** PEM client certificate chain, for a server that requires mTLS. */
      cert?: string | Buffer;
      /** PEM private key of `cert`. */
      key?: string | Buffer;
      /** Name to check the server certificate against, when it differs from the host. */
      servername?: string;
    };

export interface JobControlClientOptions {
  /**
   * Where the server listens: "host:port" (e.g. "127.0.0.1:50051"), or a URL
   * ("http://host:port" for plaintext, "https://host:port" for TLS).
   */
  address: string;
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Use TLS. Implied by an https:// address; a plain host:port means plaintext. */
  tls?: TlsOptions;
  /** Deadline for each unary call in milliseconds (default: none). Per call: `timeoutMs`. */
  defaultTimeoutMs?: number;
  /** More interceptors (logging, tracing, extra headers), run after the token one. */
  interceptors?: Interceptor[];
}

/** Optional settings of `submit()`, matching SubmitJobRequest. */
export interface SubmitOptions {
  /** Higher runs first, 0 (default) to 1000. */
  priority?: number;
  /** The same key with the same request returns the first job instead of a new one. */
  idempotencyKey?: string;
  /** Not before this time. */
  runAfter?: Date;
  /** Not before this many milliseconds after submission. */
  delayMs?: number;
  /** Attempts before the job is FAILED, 1 to 100 (0 or absent: the server's default, 3). */
  maxAttempts?: number;
  /** Longest one attempt may run, in milliseconds (absent: no limit). */
  timeoutMs?: number;
  /** Key/value labels to filter by. */
  labels?: Record<string, string>;
}

/** Per-call settings: an AbortSignal, a deadline, extra headers. */
export type CallSettings = Pick<CallOptions, "signal" | "timeoutMs" | "headers">;

export interface WatchOptions extends Pick<CallOptions, "signal" | "headers"> {
  /**
   * Resume after this event sequence (the `sequence` of the last event you saw):
   * the server replays every later event first, so nothing is missed. Absent: start
   * with a snapshot of the job as it is now.
   */
  afterSequence?: bigint | number | string;
}

export interface JobControlClient {
  /** Submits a job and returns it as stored (PENDING). */
  submit(
    type: string,
    payload?: JsonObject,
    options?: SubmitOptions,
    call?: CallSettings,
  ): Promise<Job>;
  /** Gets a job: NOT_FOUND for an unknown id, INVALID_ARGUMENT for a malformed one. */
  get(jobId: string, call?: CallSettings): Promise<Job>;
  /**
   * Cancels a job: a PENDING job is CANCELLED at once, a RUNNING one gets
   * cancel_requested (watch it to see CANCELLED). FAILED_PRECONDITION for a finished job.
   */
  cancel(jobId: string, reason?: string, call?: CallSettings): Promise<Job>;
  /** Runs a FAILED or CANCELLED job again; FAILED_PRECONDITION in any other state. */
  retry(jobId: string, call?: CallSettings): Promise<Job>;
  /**
   * Streams a job's events: first a snapshot (or, with `afterSequence`, the replay),
   * then every change; the iteration ends after the terminal event (SUCCEEDED, FAILED
   * or CANCELLED). Breaking out of the loop or aborting `signal` ends the stream.
   */
  watch(jobId: string, options?: WatchOptions): AsyncIterable<JobEvent>;
  /** The generated Connect client, for every RPC (SubmitJobs, ListJobs, WatchJobs, ...). */
  readonly raw: Client<typeof JobControl>;
  /** The underlying transport, to build other clients on the same connection. */
  readonly transport: Transport;
  /** Closes the HTTP/2 connection; calls in flight fail. Idle connections don't keep Node alive. */
  close(): void;
}

const TERMINAL_STATES: ReadonlySet<JobState> = new Set([
  JobState.SUCCEEDED,
  JobState.FAILED,
  JobState.CANCELLED,
]);

/** Whether a job state is final (SUCCEEDED, FAILED or CANCELLED). */
export function isTerminalState(state: JobState): boolean {
  return TERMINAL_STATES.has(state);
}

/** "SUCCEEDED" for JobState.SUCCEEDED, and so on. */
export function jobStateName(state: JobState): string {
  return JobState[state] ?? `JOB_STATE_${state}`;
}

/** "PROGRESS" for EventKind.PROGRESS, and so on. */
export function eventKindName(kind: EventKind): string {
  return EventKind[kind] ?? `EVENT_KIND_${kind}`;
}

/** Creates a client. Nothing connects until the first call. */
export function createJobControlClient(options: JobControlClientOptions): JobControlClient {
  const baseUrl = toBaseUrl(options.address, options.tls);
  const nodeOptions: SecureClientSessionOptions = {};
  if (typeof options.tls === "object") {
    const { ca, cert, key, servername } = options.tls;
    Object.assign(nodeOptions, { ca, cert, key, servername });
  }
  // Our own session manager, so close() can end the connection.
  const sessionManager = new Http2SessionManager(baseUrl, {}, nodeOptions);
  const interceptors: Interceptor[] = [];
  if (options.token !== undefined && options.token !== "") {
    const authorization = `Bearer ${options.token}`;
    interceptors.push((next) => (request) => {
      request.header.set("authorization", authorization);
      return next(request);
    });
  }
  interceptors.push(...(options.interceptors ?? []));
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors,
    defaultTimeoutMs: options.defaultTimeoutMs,
  });
  const raw = createClient(JobControl, transport);

  return {
    raw,
    transport,

    async submit(type, payload = {}, submitOptions = {}, call) {
      const { runAfter, delayMs, timeoutMs } = submitOptions;
      if (runAfter !== undefined && delayMs !== undefined) {
        throw new ConnectError("give runAfter or delayMs, not both", Code.InvalidArgument);
      }
      const response = await raw.submitJob(
        {
          type,
          payload,
          priority: submitOptions.priority ?? 0,
          idempotencyKey: submitOptions.idempotencyKey ?? "",
          maxAttempts: submitOptions.maxAttempts ?? 0,
          labels: submitOptions.labels ?? {},
          timeout: timeoutMs === undefined ? undefined : durationFromMs(timeoutMs),
          schedule:
            runAfter !== undefined
              ? { case: "runAfter", value: timestampFromDate(runAfter) }
              : delayMs !== undefined
                ? { case: "delay", value: durationFromMs(delayMs) }
                : { case: undefined },
        },
        call,
      );
      return requireJob(response.job, "SubmitJob");
    },

    async get(jobId, call) {
      return requireJob((await raw.getJob({ jobId }, call)).job, "GetJob");
    },

    async cancel(jobId, reason = "", call) {
      return requireJob((await raw.cancelJob({ jobId, reason }, call)).job, "CancelJob");
    },

    async retry(jobId, call) {
      return requireJob((await raw.retryJob({ jobId }, call)).job, "RetryJob");
    },

    watch(jobId, watchOptions = {}) {
      const { afterSequence, signal, headers } = watchOptions;
      return {
        async *[Symbol.asyncIterator]() {
          const stream = raw.watchJob(
            {
              jobId,
              afterSequence: afterSequence === undefined ? undefined : toSequence(afterSequence),
            },
            { signal, headers },
          );
          for await (const response of stream) {
            if (response.event !== undefined) {
              yield response.event;
            }
          }
        },
      };
    },

    close() {
      sessionManager.abort();
    },
  };
}

/** One field error from the google.rpc.BadRequest details of an INVALID_ARGUMENT error. */
export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * The field errors (google.rpc.BadRequest) the server attached to an error, if any:
 * e.g. `[{ field: "job_id", description: "..." }]` for a malformed id.
 */
export function fieldViolations(error: unknown): FieldViolation[] {
  const connectError = ConnectError.from(error);
  const violations: FieldViolation[] = [];
  for (const detail of connectError.details) {
    if (!("type" in detail) || detail.type.replace(/^.*\//, "") !== "google.rpc.BadRequest") {
      continue;
    }
    // BadRequest { repeated FieldViolation field_violations = 1; }
    // FieldViolation { string field = 1; string description = 2; ... }
    const reader = new BinaryReader(detail.value);
    while (reader.pos < reader.len) {
      const [fieldNo, wireType] = reader.tag();
      if (fieldNo !== 1) {
        reader.skip(wireType);
        continue;
      }
      const inner = new BinaryReader(reader.bytes());
      const violation: FieldViolation = { field: "", description: "" };
      while (inner.pos < inner.len) {
        const [no, type] = inner.tag();
        if (no === 1) violation.field = inner.string();
        else if (no === 2) violation.description = inner.string();
        else inner.skip(type);
      }
      violations.push(violation);
    }
  }
  return violations;
}

function requireJob(job: Job | undefined, rpc: string): Job {
  if (job === undefined) {
    throw new ConnectError(`${rpc} returned no job`, Code.Internal);
  }
  return job;
}

function toSequence(value: bigint | number | string): bigint {
  if (typeof value === "bigint") return value;
  if (typeof value === "number" ? Number.isSafeInteger(value) : /^\s*\d+\s*$/.test(value)) {
    return BigInt(value);
  }
  throw new ConnectError(
    `afterSequence must be a whole number, got ${JSON.stringify(String(value))}`,
    Code.InvalidArgument,
  );
}

function toBaseUrl(address: string, tls: TlsOptions | undefined): string {
  const trimmed = address.trim();
  if (trimmed === "") {
    throw new TypeError("address is empty; expected host:port or a URL");
  }
  if (/^https?:\/\//i.test(trimmed)) {
    const url = new URL(trimmed);
    if (tls !== undefined && tls !== false && url.protocol === "http:") {
      url.protocol = "https:";
    }
    return url.toString().replace(/\/$/, "");
  }
  const scheme = tls === undefined || tls === false ? "http" : "https";
  return `${scheme}://${trimmed}`;
}

export {
  errorResponse,
  errorToJson,
  eventToJson,
  grpcCodeName,
  httpStatusFromCode,
  jobEventsResponse,
  jobToJson,
  type JobEventsResponseOptions,
  type JobWatcher,
} from "./sse.js";
