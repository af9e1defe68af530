"""Server interceptor: trace span, request context, authentication by access level, error mapping, log.

Each call gets one SERVER span named ``/package.Service/Method`` (OTel's RPC conventions),
continuing the caller's W3C trace context from the metadata. The kit opens it itself
rather than through opentelemetry-instrumentation-grpc's interceptor, which rebuilt the
method handler on every call and cost more than the whole rest of this wrapper.

Who may call each RPC comes from its options in protos/ (kit/access.py), so the rule
lives next to the contract: PUBLIC needs nothing, USER a signed-in user (or a service
declared to act for one), ADMIN an admin, INTERNAL one of the services it names.
An API key is never an admin credential, and a method marked
``(stylestudio.common.v1.session_only)`` refuses API keys altogether.
Once the caller may call it, the request (each message of a client stream) is checked
against its descriptor (kit.validation: control characters, enum numbers, integer bounds).
A ``DomainError`` raised by a handler becomes its gRPC status with ErrorInfo; any
other exception becomes INTERNAL with no detail leaked to the caller.
Before any of it, admission control (kit.admission) refuses a call from outside when the
process already runs as many as it may; such a call is not authenticated, only logged, unless
its method declares rate-limit headers (kit.ratelimits): those describe the caller, so its
caller is authenticated and its allowance read for the refusal too, as for every other answer.
Every call's duration, authentication included, goes to ``rpc_server_duration_seconds`` by
status code (kit.metrics.RpcMetrics; one cached histogram child per method and code).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from kit import telemetry, validation
from kit.access import UNDECLARED, MethodAccess, UserLookup, acting_for_user, authorize
from kit.admission import UNLIMITED, InFlightLimiter
from kit.auth import (
    ANONYMOUS,
    Caller,
    CallerKind,
    ServiceCredentials,
    UserTokenVerifier,
    bind_caller,
    current_caller,
    reset_caller,
)
from kit.errors import (
    TRANSPORT_FAILURES,
    DomainError,
    Unauthenticated,
    ValidationError,
    dependency_failure,
    from_rpc_error,
    internal_status,
    to_rpc_status,
)
from kit.logs import describe_error, request_id_var, user_id_var
from kit.metrics import MethodRecorder, RpcMetrics
from kit.origin import RELAY_CREDENTIAL_HEADER, bind_relayed, reset_relayed
from kit.ratelimits import AllowanceReader
from kit.service_keys import GATEWAY_IDENTITY
from stylestudio.common.v1 import access_pb2

log = logging.getLogger("stylestudio.rpc")
_tracer = trace.get_tracer("stylestudio.rpc")

REQUEST_ID_HEADER = "x-request-id"
IDEMPOTENCY_KEY_HEADER = "idempotency-key"
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


MAX_IDEMPOTENCY_KEY_LENGTH = 255


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str:
    """The first value of the call's metadata entry ``name`` ("" if absent)."""
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def idempotency_key(context: grpc.aio.ServicerContext) -> str:
    """The call's Idempotency-Key ("" if none), refused when longer than the services store."""
    key = metadata_value(context, IDEMPOTENCY_KEY_HEADER)
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValidationError(
            f"Idempotency-Key may be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters", field="Idempotency-Key"
        )
    if not key.isascii() or not key.isprintable():  # kit.idempotency.item_key relies on it
        raise ValidationError("Idempotency-Key must be printable ASCII", field="Idempotency-Key")
    return key


class Authenticator:
    """Turns the call's metadata into a Caller, and tells whether the gateway relayed the call."""

    def __init__(
        self,
        credentials: ServiceCredentials,
        verify_user: UserTokenVerifier | None,
        lookup_user: UserLookup | None = None,
    ) -> None:
        self._credentials = credentials
        self._verify_user = verify_user
        self._lookup_user = lookup_user
        self._services: dict[str, Caller] = {}

    async def caller_from(
        self, metadata: Mapping[str, str], method: str = "", access: MethodAccess = UNDECLARED
    ) -> Caller:
        header = metadata.get("authorization", "")
        if not header:
            return ANONYMOUS
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Malformed Authorization header; expected 'Bearer <token>'")
        token = token.strip()
        service = self._credentials.verify(token)
        if service is not None:
            if service.on_behalf_of:
                return await acting_for_user(method, access, service, self._lookup_user)
            caller = self._services.get(service.identity)
            if caller is None:
                caller = self._services[service.identity] = Caller(CallerKind.SERVICE, service.identity)
            return caller
        if self._verify_user is None:
            raise Unauthenticated("Invalid or expired credentials")
        return await self._verify_user(token)

    def relayed_by_gateway(self, metadata: Mapping[str, str]) -> bool:
        """True when the call carries the gateway's own credential beside the user's: only then
        is the client's address and user agent in the metadata believed (kit.origin)."""
        token = metadata.get(RELAY_CREDENTIAL_HEADER)
        if not token:
            return False
        relay = self._credentials.verify(token)
        if relay is None or relay.identity != GATEWAY_IDENTITY or relay.on_behalf_of:
            raise Unauthenticated("Invalid gateway relay credential")
        return True


class KitServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        access: Mapping[str, MethodAccess],
        admission: InFlightLimiter = UNLIMITED,
        metrics: RpcMetrics | None = None,
        allowances: Mapping[str, AllowanceReader] | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._access = access
        self._admission = admission
        self._metrics = metrics
        self._allowances = dict(allowances or {})
        # Wrapped handlers are built once per method: nothing per call but the call itself.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or method.startswith(_QUIET_PREFIXES):
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        recorder = self._metrics.for_method(method) if self._metrics is not None else None
        access = self._access.get(method, UNDECLARED)
        allowance = self._allowances.get(method)
        call = _Call(self._authenticator, method, access, self._admission, recorder, allowance)
        handler = validation.checking(handler, method)  # every request message, after the access check
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.wrap_stream(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """The per-method wrapper: binds context, checks access, maps errors, logs one line."""

    def __init__(
        self,
        authenticator: Authenticator,
        method: str,
        access: MethodAccess,
        admission: InFlightLimiter,
        recorder: MethodRecorder | None = None,
        allowance: AllowanceReader | None = None,
    ) -> None:
        self._authenticator, self._method, self._access = authenticator, method, access
        self._admission = admission
        self._recorder = recorder
        self._allowance = allowance
        self._attributes = telemetry.rpc_attributes(method)

    def wrap_unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()  # the call's duration includes its authentication
            admitted = self._admission.admits(self._access)
            if admitted:  # held until the call ends, however it ends
                self._admission.enter()
            try:
                # a refused call's caller is known only where the refusal must describe them
                authenticate = admitted or self._allowance is not None
                state, auth_error = await self._enter(context, authenticate=authenticate)
            except BaseException:  # canceled while authenticating
                if admitted:
                    self._admission.leave()
                raise
            code = grpc.StatusCode.OK
            try:
                if not admitted:
                    raise self._admission.refusal()
                self._check(auth_error)
                result = behavior(request, context)
                response = await result if inspect.isawaitable(result) else result
                await self._send_allowance(context, auth_error)
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except (asyncio.CancelledError, GeneratorExit):  # the client went away, or its deadline
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as failure:
                error = _mapped(failure)
                code = _code_for(error)
                if code is grpc.StatusCode.INTERNAL:
                    telemetry.record_error(state.span, error)
                await self._send_allowance(context, auth_error)
                await self._abort(error, code, context)
            finally:
                if admitted:
                    self._admission.leave()
                self._exit(state, started, code)

        return run

    async def _send_allowance(self, context: grpc.aio.ServicerContext, auth_error: Exception | None) -> None:
        """The rate-limit headers of a method that declares them (kit.ratelimits), for a signed-in
        caller, on the answer or the refusal alike. Read after the handler: what it counted, or
        gave back, is in it. An unreadable allowance (Redis down) costs the headers only."""
        caller = current_caller()
        if self._allowance is None or auth_error is not None or caller.kind is not CallerKind.USER:
            return
        try:
            allowance = await self._allowance(caller)
            await context.send_initial_metadata(allowance.metadata())
        except Exception as error:
            log.warning(
                "allowance unreadable; answered without rate-limit headers",
                extra={"rpc": self._method, "error": describe_error(error)},
            )

    def wrap_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # Checked on entry; a stream mostly waits, so it holds no place (kit.admission).
            started = time.perf_counter()  # the call's duration includes its authentication
            admitted = self._admission.admits(self._access)
            state, auth_error = await self._enter(context, authenticate=admitted)
            code = grpc.StatusCode.OK
            try:
                if not admitted:
                    raise self._admission.refusal()
                self._check(auth_error)
                responses = behavior(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:
                    for response in responses:
                        yield response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except (asyncio.CancelledError, GeneratorExit):  # the client went away, or its deadline
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as failure:
                error = _mapped(failure)
                code = _code_for(error)
                if code is grpc.StatusCode.INTERNAL:
                    telemetry.record_error(state.span, error)
                await self._abort(error, code, context)
            finally:
                self._exit(state, started, code)

        return run

    async def _abort(
        self, error: Exception, code: grpc.StatusCode, context: grpc.aio.ServicerContext
    ) -> None:
        """End the call with the status ``error`` means (context.abort raises)."""
        if isinstance(error, DomainError):
            await context.abort_with_status(to_rpc_status(error))
        elif isinstance(error, NotImplementedError):
            # The generated servicer base: behaviour not built yet.
            await context.abort(code, f"{self._method} is not implemented yet")
        else:
            log.error("unhandled error", extra={"rpc": self._method}, exc_info=error)
            await context.abort_with_status(internal_status())

    async def _enter(
        self, context: grpc.aio.ServicerContext, *, authenticate: bool = True
    ) -> tuple[_CallState, Exception | None]:
        metadata = {
            key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
        }
        request_id = metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        traceparent = metadata.get("traceparent", "")
        baggage = metadata.get(telemetry.BAGGAGE_HEADER, "")
        parent = (
            telemetry.extract_trace_context(traceparent, metadata.get("tracestate", ""), baggage)
            if traceparent or baggage
            else None
        )
        span = _tracer.start_span(
            self._method, parent, SpanKind.SERVER, self._attributes | {telemetry.ATTR_REQUEST_ID: request_id}
        )
        state = _CallState(
            span,
            otel_context.attach(trace.set_span_in_context(span, parent)),
            request_id,
            request_id_var.set(request_id),
        )
        auth_error: Exception | None = None
        caller = ANONYMOUS
        if authenticate:  # a call admission control refused spends nothing on its credentials
            try:
                state.relayed_token = bind_relayed(self._authenticator.relayed_by_gateway(metadata), context)
                caller = await self._authenticator.caller_from(metadata, self._method, self._access)
            except Exception as error:  # raised inside the call's try: mapped, logged and ended there
                auth_error, caller = error, ANONYMOUS
        if caller.kind is CallerKind.USER:
            span.set_attribute(telemetry.ATTR_USER_ID, caller.subject)
            state.user_id_token = user_id_var.set(caller.subject)  # every log line of the call
        service = caller.acting_service or (caller.subject if caller.kind is CallerKind.SERVICE else "")
        if service:
            span.set_attribute(telemetry.ATTR_CALLER_SERVICE, service)
        state.caller_token = bind_caller(caller)
        return state, auth_error

    def _check(self, auth_error: Exception | None) -> None:
        # Bad credentials on a public method just make the caller anonymous; a failure of the
        # check itself (not a DomainError) fails every call.
        if auth_error is not None and (
            self._access.level != access_pb2.ACCESS_PUBLIC or not isinstance(auth_error, DomainError)
        ):
            raise auth_error
        authorize(self._method, self._access, current_caller())

    def _exit(self, state: _CallState, started: float, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - started
        if self._recorder is not None:
            self._recorder.observe(code, elapsed)
        elapsed_ms = round(elapsed * 1000, 2)
        level = logging.WARNING if code == grpc.StatusCode.INTERNAL else logging.INFO
        extra: dict[str, object] = {"rpc": self._method, "code": code.name, "duration_ms": elapsed_ms}
        caller = current_caller()
        if caller.acting_service:  # the audit record of a call made for a user
            extra |= {"caller_service": caller.acting_service, "on_behalf_of": caller.subject}
        elif caller.kind is CallerKind.SERVICE:
            extra["caller_service"] = caller.subject
        log.log(level, "rpc", extra=extra)
        telemetry.end_rpc_span(state.span, code, server=True)
        if request_id_var.get(None) != state.request_id:
            # A stream abandoned by its client is closed by grpc from another context than the
            # one the call set its variables in: there is nothing of the call's to undo here.
            return
        if state.caller_token is not None:
            reset_caller(state.caller_token)
        if state.relayed_token is not None:
            reset_relayed(state.relayed_token)
        if state.user_id_token is not None:
            user_id_var.reset(state.user_id_token)
        request_id_var.reset(state.request_id_token)
        otel_context.detach(state.context_token)


class _CallState:
    """What one call set up on entry and undoes on exit."""

    __slots__ = (
        "caller_token",
        "context_token",
        "relayed_token",
        "request_id",
        "request_id_token",
        "span",
        "user_id_token",
    )

    def __init__(self, span: trace.Span, context_token: Any, request_id: str, request_id_token: Any) -> None:
        self.span, self.context_token = span, context_token
        self.request_id, self.request_id_token = request_id, request_id_token
        self.caller_token: Any = None
        self.relayed_token: Any = None
        self.user_id_token: Any = None


def _mapped(failure: Exception) -> Exception:
    """What a handler's exception means to the caller: a value the database refused is a 400,
    a dependency that refused or dropped the connection (database, Redis) a 503
    SERVICE_UNAVAILABLE naming it (kit.errors.dependency_failure); the rest as it is."""
    error = validation.database_refusal(failure)
    if isinstance(error, DomainError):
        return error
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in TRANSPORT_FAILURES:
        # A call to another service that a handler let through: that service is unavailable
        # (callers that know which pass kit.errors.from_rpc_error the name).
        return from_rpc_error(error)
    unavailable = dependency_failure(error)
    if unavailable is None:
        return error
    log.warning(
        "dependency unavailable",
        extra={"dependency": unavailable.dependency, "error": describe_error(error)},
    )
    return unavailable


def _code_for(error: Exception) -> grpc.StatusCode:
    if isinstance(error, DomainError):
        return error.code
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL
