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

import type { Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { SecureClientSessionOptions } from "node:http2";

import { bearerToken, clientOver, type JobControlClient } from "./client.js";

export { Code, ConnectError } from "@connectrpc/connect";
export type { JsonObject, JsonValue } from "@bufbuild/protobuf";
export { timestampDate, durationMs } from "@bufbuild/protobuf/wkt";
export * from "./gen/jobcontrol/v1/job_pb.js";
export * from "./gen/jobcontrol/v1/job_control_pb.js";
export * from "./client.js";

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
  const interceptors: Interceptor[] = [
    ...bearerToken(options.token),
    ...(options.interceptors ?? []),
  ];
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors,
    defaultTimeoutMs: options.defaultTimeoutMs,
  });
  return clientOver(transport, () => sessionManager.abort());
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
