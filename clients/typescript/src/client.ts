/**
 * The part of the client that does not depend on where it runs: the JobControlClient
 * interface and its methods over any Connect transport. The Node entry (index.ts)
 * gives it a gRPC transport over HTTP/2, the browser entry (web.ts) a fetch-based
 * Connect or gRPC-Web one.
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

import { JobControl } from "./gen/jobcontrol/v1/job_control_pb.js";
import { EventKind, JobState, type Job, type JobEvent } from "./gen/jobcontrol/v1/job_pb.js";

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

/** Sends `authorization: Bearer <token>` on every call (none for an empty token). */
export function bearerToken(token: string | undefined): Interceptor[] {
  if (token === undefined || token === "") return [];
  const authorization = `Bearer ${token}`;
  return [
    (next) => (request) => {
      request.header.set("authorization", authorization);
      return next(request);
    },
  ];
}

/** The client's methods over `transport`; `close` ends what the transport holds open. */
export function clientOver(transport: Transport, close: () => void): JobControlClient {
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

    close,
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
