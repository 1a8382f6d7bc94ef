/**
 * The client in a browser (or any runtime with fetch): the same JobControlClient as
 * the Node entry, over the server's HTTP listener (`jobcontrol-server --http-listen`)
 * with the Connect protocol (default) or gRPC-Web, so a page calls the service with
 * no server of its own in between. A page on another origin needs that origin in the
 * server's `--http-cors-origin`.
 *
 *     import { createJobControlClient } from "@jobcontrol/client/web";
 *     const jobs = createJobControlClient("http://127.0.0.1:8080", { token });
 *     const job = await jobs.submit("demo.sleep", { seconds: 2 });
 *     for await (const event of jobs.watch(job.id)) console.log(event.job?.progress);
 */

import type { Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

import { bearerToken, clientOver, type JobControlClient } from "./client.js";

export { Code, ConnectError } from "@connectrpc/connect";
export type { JsonObject, JsonValue } from "@bufbuild/protobuf";
export { timestampDate, durationMs } from "@bufbuild/protobuf/wkt";
export * from "./gen/jobcontrol/v1/job_pb.js";
export * from "./gen/jobcontrol/v1/job_control_pb.js";
export * from "./client.js";

export interface WebClientOptions {
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** "connect" (default: JSON, readable in the browser's network tab) or "grpc-web". */
  protocol?: "connect" | "grpc-web";
  /** Binary protobuf instead of JSON (Connect only; gRPC-Web is always binary). */
  binary?: boolean;
  /** Deadline for each unary call in milliseconds (default: none). */
  defaultTimeoutMs?: number;
  /** More interceptors (logging, tracing, extra headers), run after the token one. */
  interceptors?: Interceptor[];
}

/**
 * A client for the server at `baseUrl` (its HTTP listener, e.g. "http://127.0.0.1:8080",
 * or "" / "/" for the page's own origin). Nothing connects until the first call;
 * `close()` aborts the streams this client has open.
 */
export function createJobControlClient(
  baseUrl: string,
  options: WebClientOptions = {},
): JobControlClient {
  const streams = new AbortController();
  const interceptors: Interceptor[] = [
    ...bearerToken(options.token),
    ...(options.interceptors ?? []),
  ];
  const settings = {
    baseUrl: toBaseUrl(baseUrl),
    interceptors,
    defaultTimeoutMs: options.defaultTimeoutMs,
    // Every call also ends when the client is closed.
    fetch: (input: Parameters<typeof fetch>[0], init?: RequestInit) =>
      globalThis.fetch(input, {
        ...init,
        signal: init?.signal ? AbortSignal.any([init.signal, streams.signal]) : streams.signal,
      }),
  };
  const transport =
    options.protocol === "grpc-web"
      ? createGrpcWebTransport(settings)
      : createConnectTransport({ ...settings, useBinaryFormat: options.binary ?? false });
  return clientOver(transport, () => streams.abort());
}

function toBaseUrl(baseUrl: string): string {
  const trimmed = baseUrl.trim().replace(/\/+$/, "");
  const page = (globalThis as { location?: { origin: string } }).location;
  if (trimmed === "" && page !== undefined) {
    return page.origin;
  }
  return trimmed;
}
