"""Opening the gRPC channel a client talks through, in both flavours.

The channel's own reconnect backoff is tied to the client's retry backoff: left at
gRPC's defaults (growing to two minutes) a channel that lost its server would still be
waiting to redial long after the server came back, and every retry or watch reconnect
in the meantime would fail at once.
"""

from __future__ import annotations

from typing import Any

import grpc

from jobcontrol.client.options import ClientOptions


def channel_arguments(options: ClientOptions) -> list[tuple[str, Any]]:
    backoff = options.retry
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, round(backoff.initial * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, round(backoff.maximum * 1000))),
    ]


def _credentials(options: ClientOptions) -> grpc.ChannelCredentials | None:
    tls = options.tls
    if tls is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def open_channel(options: ClientOptions) -> grpc.Channel:
    credentials = _credentials(options)
    arguments = channel_arguments(options)
    if credentials is None:
        return grpc.insecure_channel(options.address, options=arguments)
    return grpc.secure_channel(options.address, credentials, options=arguments)


def open_aio_channel(options: ClientOptions) -> grpc.aio.Channel:
    credentials = _credentials(options)
    arguments = channel_arguments(options)
    if credentials is None:
        return grpc.aio.insecure_channel(options.address, options=arguments)
    return grpc.aio.secure_channel(options.address, credentials, options=arguments)
