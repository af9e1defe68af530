"""The generation service's gRPC servicer: proto in, domain call, proto out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import empty_pb2

from kit import paging
from kit.auth import Caller, current_caller, user_id_for
from kit.errors import DomainError, FeatureNotInPlan, NotFound, ValidationError
from kit.idempotency import IdempotencyKeyReused, item_key, request_fingerprint
from kit.interceptors import idempotency_key
from kit.ratelimits import Allowance
from kit.server import Registration, Runtime
from services.generation import batches, progress, store
from services.generation.lifecycle import Status
from services.generation.saga import Generation, Saga
from services.generation.starting import batch_conflicts, start_generation
from services.generation.webhooks import handle_replicate_webhook
from stylestudio.common.v1 import error_pb2
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc, resources_pb2

WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class GenerationApi(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, saga: Saga) -> None:
        self.saga = saga

    async def CreateGeneration(
        self, request: generation_pb2.CreateGenerationRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.Generation:
        # Its answers carry the hourly allowance (X-RateLimit-*): the kit sends it (registrations).
        generation = await start_generation(
            self.saga, current_caller(), request, idempotency_key(context) or None
        )
        return to_proto(generation)

    async def GetGeneration(
        self, request: generation_pb2.GetGenerationRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.Generation:
        generation_id = _generation_id(request.id)
        async with self.saga.db.autocommit() as session:
            generation = await store.get_visible(session, generation_id, current_caller().user_id)
        if generation is None:
            raise NotFound("Generation not found", details={"id": request.id})
        return to_proto(generation)

    async def ListGenerations(
        self, request: generation_pb2.ListGenerationsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListGenerationsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_cursor(request.page_token)
        status = None
        if request.status != resources_pb2.GENERATION_STATUS_UNSPECIFIED:
            status = Status(resources_pb2.GenerationStatus.Name(request.status))
        async with self.saga.db.autocommit() as session:
            rows = await store.list_for_user(session, current_caller().user_id, status, after, size + 1)
        page = paging.page_of(rows, size, paging.cursor_of)
        return generation_pb2.ListGenerationsResponse(
            generations=[to_proto(row) for row in page.items], next_page_token=page.next_page_token
        )

    async def CancelGeneration(
        self, request: generation_pb2.CancelGenerationRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.Generation:
        generation = await self.saga.cancel(_generation_id(request.id), current_caller().user_id)
        return to_proto(generation)

    async def WatchGeneration(
        self, request: generation_pb2.WatchGenerationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[resources_pb2.Generation]:
        async for generation in progress.watch(
            self.saga, _generation_id(request.id), current_caller().user_id
        ):
            yield to_proto(generation)

    async def BatchCreateGenerations(
        self, request: generation_pb2.BatchCreateGenerationsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.BatchCreateGenerationsResponse:
        caller, settings = current_caller(), self.saga.settings
        if caller.plan not in settings.batch_plans:
            raise FeatureNotInPlan(
                "Batch generation is available on the Pro and Enterprise plans", details={"plan": caller.plan}
            )
        if not 1 <= len(request.requests) <= settings.batch_max_requests:
            raise ValidationError(
                f"A batch holds 1 to {settings.batch_max_requests} requests",
                field="requests",
                details={"max": settings.batch_max_requests},
            )
        key = idempotency_key(context)
        await self.saga.admission.check()  # a full queue refuses the whole batch, not item by item
        batch_fingerprint = request_fingerprint(request)
        # Item keys live apart from single-create keys (kit.idempotency.item_key); each item's
        # fingerprint includes the whole batch's, so a key reused for another batch is a 409.
        item_keys = [item_key(key, "batch", index) for index in range(len(request.requests))] if key else []
        if item_keys:
            fingerprints = [request_fingerprint(item, batch_fingerprint) for item in request.requests]
            if await batch_conflicts(self.saga, caller.user_id, item_keys, fingerprints):
                raise IdempotencyKeyReused(key)
        # Recorded first and sealed last, so that its summary waits for every item (batches.py).
        batch_id = batches.batch_id_for(caller.user_id, key)
        async with self.saga.db.transaction() as session:
            await batches.create(session, batch_id, caller.user_id, len(request.requests))
        results = await self._start_batch(caller, request, item_keys, batch_fingerprint, batch_id)
        async with self.saga.db.transaction() as session:
            await batches.seal(self.saga.outbox, session, batch_id)
        return generation_pb2.BatchCreateGenerationsResponse(results=results)

    async def _start_batch(
        self,
        caller: Caller,
        request: generation_pb2.BatchCreateGenerationsRequest,
        item_keys: list[str],
        batch_fingerprint: str,
        batch_id: uuid.UUID,
    ) -> list[generation_pb2.BatchResult]:
        results = []
        # One after the other, so a wallet that can pay for some gets the first ones.
        for index, item in enumerate(request.requests):
            try:
                generation = await start_generation(
                    self.saga,
                    caller,
                    item,
                    item_keys[index] if item_keys else None,
                    batch_fingerprint=batch_fingerprint,
                    batch_id=batch_id,
                )
            except DomainError as error:
                results.append(
                    generation_pb2.BatchResult(
                        error=error_pb2.Error(reason=str(error.reason), message=error.message)
                    )
                )
            else:
                results.append(generation_pb2.BatchResult(generation=to_proto(generation)))
        return results

    async def GetGenerationAllowance(
        self, request: generation_pb2.GetGenerationAllowanceRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerationAllowance:
        allowance = await self.saga.limiter.allowance(user_id_for(request.user_id), request.plan)
        answer = generation_pb2.GenerationAllowance(limit=allowance.limit, remaining=allowance.remaining)
        answer.next_generation_at.FromDatetime(allowance.next_allowed_at)
        return answer

    async def ListStyles(
        self, request: generation_pb2.ListStylesRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListStylesResponse:
        return generation_pb2.ListStylesResponse(
            styles=[
                resources_pb2.Style(name=s.name, display_name=s.display_name, prompt_suffix=s.prompt_suffix)
                for s in self.saga.catalog.styles.values()
            ]
        )

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        return generation_pb2.ListModelsResponse(
            models=[
                resources_pb2.Model(
                    name=m.name,
                    display_name=m.display_name,
                    multiplier=m.multiplier,
                    provider=m.provider,
                    parameters=m.accepted_parameters,
                    stand_in=m.stand_in,
                )
                for m in self.saga.settings.offered_models().values()
            ]
        )

    async def HandleReplicateWebhook(
        self, request: generation_pb2.HandleReplicateWebhookRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        metadata = {
            key: value for key, value in (context.invocation_metadata() or ()) if key in WEBHOOK_HEADERS
        }
        for header in WEBHOOK_HEADERS:
            if not isinstance(metadata.get(header), str) or not metadata[header]:
                raise ValidationError(f"Missing {header} header", field=header)
        await handle_replicate_webhook(
            self.saga,
            metadata,  # type: ignore[arg-type]
            request.http_body.data,
            request.generation_id,
        )
        return empty_pb2.Empty()

    async def GetUserGenerationStats(
        self, request: generation_pb2.GetUserGenerationStatsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GetUserGenerationStatsResponse:
        user_id = user_id_for(request.user_id)
        async with self.saga.db.autocommit() as session:
            total, completed, failed = await store.user_stats(session, user_id)
        return generation_pb2.GetUserGenerationStatsResponse(total=total, completed=completed, failed=failed)


def to_proto(row: Generation) -> resources_pb2.Generation:
    generation = resources_pb2.Generation(
        id=str(row.id),
        status=resources_pb2.GenerationStatus.Value(row.status),
        prompt=row.prompt,
        enhanced_prompt=row.enhanced_prompt,
        parameters=resources_pb2.GenerationParameters(
            model=row.model,
            style=row.style,
            quality=row.quality,
            aspect_ratio=row.aspect_ratio,
            num_images=row.num_images,
            seed=row.seed,
            negative_prompt=row.negative_prompt,
            guidance_scale=row.guidance_scale,
        ),
        product_image_files=list(row.product_image_files),
        model_image_files=list(row.model_image_files),
        result_image_files=list(row.result_image_files),
        token_cost=row.token_cost,
        processing_time_ms=row.processing_time_ms or 0,
        trace_id=row.trace_id,
    )
    if row.status in (Status.FAILED, Status.CANCELED) and (row.error_reason or row.error_message):
        generation.error.CopyFrom(
            error_pb2.Error(reason=row.error_reason or "", message=row.error_message or "")
        )
    generation.created_at.FromDatetime(row.created_at)
    if row.started_at is not None:
        generation.started_at.FromDatetime(row.started_at)
    if row.completed_at is not None:
        generation.completed_at.FromDatetime(row.completed_at)
    return generation


def _generation_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("Generation not found", details={"id": value[:64]}) from None


def registrations(saga: Saga) -> Sequence[Registration]:
    async def hourly_allowance(caller: Caller) -> Allowance:
        """What starts and batches answer in X-RateLimit-* (their proto options declare it)."""
        return await saga.limiter.allowance(caller.user_id, caller.plan)

    return [
        Registration(
            GenerationApi(saga),
            generation_pb2_grpc.add_GenerationServiceServicer_to_server,
            generation_pb2.DESCRIPTOR.services_by_name["GenerationService"],
            allowance=hourly_allowance,
        ),
    ]


__all__ = ["GenerationApi", "Runtime", "registrations", "to_proto"]
