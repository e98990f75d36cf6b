"""DriftClient: logs inference records to driftd without blocking the caller."""

from __future__ import annotations

import atexit
import collections
import logging
import random
import threading
import time
import weakref
from typing import Any, Deque, Dict, Iterator, List, NamedTuple, Optional, Tuple

import grpc
from google.protobuf import json_format

from . import _columns
from ._columns import CATEGORICAL, NUMERIC, Column

try:
    from ._proto.driftd.v1 import driftd_pb2 as pb
except ImportError as e:  # pragma: no cover - only in an unbuilt source tree
    raise ImportError(
        "driftd_client: the generated protobuf modules (driftd_client._proto) are missing. "
        "They are generated when the package is built: install it with "
        "`pip install clients/python` from the driftd repository instead of importing "
        f"the source tree directly. ({e})"
    ) from e

log = logging.getLogger("driftd_client")

_SERVICE = "/driftd.v1.Driftd/"
# Codes after which the daemon has not stored the batch and asks for a retry
# (README: queue full, shutting down, store trouble, or no connection yet).
# DEADLINE_EXCEEDED is not retried: the batch may have been stored, and a
# retry would count its rows twice.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# One "dropping records" warning per this many seconds, so a daemon outage
# does not flood the application's log.
_DROP_WARNING_INTERVAL = 10.0


class DriftdError(RuntimeError):
    """A synchronous call (set_reference, status) failed.

    ``code`` is the ``grpc.StatusCode`` and ``details`` the daemon's message,
    which names the offending field for INVALID_ARGUMENT.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"driftd {method} failed: {code.name}: {details}")
        self.code = code
        self.details = details


class _Chunk:
    """Rows of one log() call waiting in the queue; offset counts rows
    already taken when a chunk is split over two batches."""

    __slots__ = ("seq", "schema", "values", "rows", "offset", "enqueued")

    def __init__(self, seq: int, columns: List[Column], rows: int):
        self.seq = seq
        self.schema = tuple((c.name, c.role, c.kind) for c in columns)
        self.values = [c.values for c in columns]
        self.rows = rows
        self.offset = 0
        self.enqueued = time.monotonic()


class _Slice(NamedTuple):
    schema: tuple
    values: list
    rows: int


def _message_to_dict(msg: Any) -> Dict[str, Any]:
    """MessageToDict with field names as in the proto, unset scalars
    included, and 64-bit integers as ints (the JSON mapping makes them
    strings, which would surprise `status()["versions"][0]["records_ingested"] > 0`)."""
    try:
        d = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the option differently
        d = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, including_default_value_fields=True
        )
    return _ints64(msg.DESCRIPTOR, d)


_INT64_TYPES = None


def _ints64(desc: Any, d: Dict[str, Any]) -> Dict[str, Any]:
    global _INT64_TYPES
    if _INT64_TYPES is None:
        from google.protobuf.descriptor import FieldDescriptor as F

        _INT64_TYPES = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}
    for field in desc.fields:
        if field.name not in d:
            continue
        v = d[field.name]
        if field.message_type is not None:
            if isinstance(v, list):
                d[field.name] = [_ints64(field.message_type, x) for x in v]
            elif isinstance(v, dict):
                d[field.name] = _ints64(field.message_type, v)
        elif field.type in _INT64_TYPES:
            d[field.name] = [int(x) for x in v] if isinstance(v, list) else int(v)
    return d


def _close_at_exit(ref: "weakref.ref[DriftClient]") -> None:
    client = ref()
    if client is not None:
        client.close()


class DriftClient:
    """Client of one driftd daemon for one model version.

    ``log()`` puts rows into a bounded in-memory queue and returns at once; a
    background thread sends them in batches of up to ``batch_size`` rows, at
    the latest ``flush_interval`` seconds after they were logged, with the
    unary ``IngestBatch`` RPC. When the queue holds ``queue_size`` rows, new
    rows are dropped and counted in ``dropped`` instead of slowing the caller
    down. Interpreter exit flushes (``atexit``); so do ``close()`` and leaving
    a ``with`` block.

    ``set_reference()`` and ``status()`` are synchronous.

    Counters (read any time): ``sent_records`` (rows the daemon
    acknowledged), ``missing_values`` (missing values it counted in them:
    NaN and +/-inf, and empty categories), ``dropped`` (rows dropped because the queue was full or the client
    closed), ``failed_batches`` and ``failed_records`` (batches given up:
    rejected by the daemon, or still failing after retries).

    Args:
        target: gRPC address of driftd, ``host:port``.
        model: model name, 1-128 characters of ``[A-Za-z0-9_.:-]``.
        version: model version, same alphabet.
        batch_size: most rows per IngestBatch call.
        flush_interval: seconds a logged row may wait for its batch to fill.
        queue_size: most rows waiting to be sent; more are dropped.
        timeout: deadline in seconds of each RPC, and the longest ``close()``
            waits at interpreter exit.
        max_retries: retries of a batch answered UNAVAILABLE or
            RESOURCE_EXHAUSTED, with exponential backoff.
        credentials: ``grpc.ChannelCredentials`` for TLS; plaintext if None.
        channel_options: extra gRPC channel options.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:7700",
        model: Optional[str] = None,
        version: str = "default",
        *,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        queue_size: int = 10000,
        timeout: float = 10.0,
        max_retries: int = 3,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel_options: Optional[List[Tuple[str, Any]]] = None,
    ):
        if model is None:
            raise ValueError("model is required, e.g. DriftClient(model='fraud')")
        _columns.check_name("model", model)
        _columns.check_name("version", version)
        for name, value in (("batch_size", batch_size), ("queue_size", queue_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if flush_interval <= 0 or timeout <= 0 or max_retries < 0:
            raise ValueError("flush_interval and timeout must be > 0 and max_retries >= 0")

        self.target = target
        self.model = model
        self.version = version
        self._batch_size = batch_size
        self._flush_interval = float(flush_interval)
        self._queue_size = queue_size
        self._timeout = float(timeout)
        self._max_retries = max_retries

        options = list(channel_options or [])
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._ingest_batch = self._channel.unary_unary(
            _SERVICE + "IngestBatch",
            request_serializer=pb.IngestRequest.SerializeToString,
            response_deserializer=pb.IngestResponse.FromString,
        )
        self._set_reference = self._channel.stream_unary(
            _SERVICE + "SetReference",
            request_serializer=pb.SetReferenceRequest.SerializeToString,
            response_deserializer=pb.SetReferenceResponse.FromString,
        )
        self._get_status = self._channel.unary_unary(
            _SERVICE + "GetStatus",
            request_serializer=pb.GetStatusRequest.SerializeToString,
            response_deserializer=pb.GetStatusResponse.FromString,
        )

        # One lock guards the queue, the sequence numbers and the counters.
        self._cond = threading.Condition()
        self._queue: Deque[_Chunk] = collections.deque()
        self._queued_rows = 0
        self._inflight_rows = 0  # taken by the worker, not yet answered
        self._kinds: Dict[str, str] = {}  # column -> kind first sent
        self._enqueued_seq = 0  # seq of the last chunk queued
        self._done_seq = 0  # every chunk up to this seq is sent or given up
        self._flush_seq = 0  # the worker sends at once up to this seq
        self._closing = False
        self._closed = False
        self._close_result = True
        self._last_drop_warning = -float("inf")

        self.sent_records = 0
        self.missing_values = 0
        self.dropped = 0
        self.failed_batches = 0
        self.failed_records = 0

        self._worker = threading.Thread(target=self._run, name=f"driftd-client-{model}", daemon=True)
        self._worker.start()
        # A weak reference, so registering does not keep the client alive.
        self._atexit = lambda ref=weakref.ref(self): _close_at_exit(ref)
        atexit.register(self._atexit)

    # --- public API -----------------------------------------------------

    def log(self, features: Any = None, predictions: Any = None) -> int:
        """Queues rows for sending and returns at once; never blocks on the network.

        ``features`` and ``predictions`` are each a dict of column name ->
        values (list, tuple, NumPy array or pandas Series, one value per
        row; or scalars in every column for a single row), or a pandas
        DataFrame. Features become input columns, predictions output
        columns. Numeric and boolean values make numeric columns, where
        None and NaN are missing values; strings (and other objects) make
        categorical columns, where None and NaN become "" (missing).

        Returns the number of rows queued: 0 when the queue was full or the
        client is closed (the rows are counted in ``dropped``). A call is
        queued or dropped whole, so one with more than ``queue_size`` rows
        is always dropped.

        Raises:
            ValueError: columns of unequal length, an invalid or duplicate
                column name, a column changing kind, a 2-D array; the
                message names the column. Nothing is queued then.
            TypeError: an argument of an unsupported type.
        """
        rows, columns = _columns.convert(
            features, predictions, pb.COLUMN_ROLE_INPUT, pb.COLUMN_ROLE_OUTPUT, self._kinds
        )
        if rows == 0:
            return 0
        with self._cond:
            if self._closing or self._queued_rows + rows > self._queue_size:
                self.dropped += rows
                self._warn_drop()
                return 0
            for c in columns:
                self._kinds.setdefault(c.name, c.kind)
            self._enqueued_seq += 1
            self._queue.append(_Chunk(self._enqueued_seq, columns, rows))
            self._queued_rows += rows
            if self._queued_rows >= self._batch_size or len(self._queue) == 1:
                # Wake the worker for a full batch, or to start the clock of
                # flush_interval for the first row.
                self._cond.notify_all()
            return rows

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Sends everything queued so far and waits for the outcome.

        Returns True once every row logged before the call was acknowledged
        or given up (see ``failed_batches``), False if ``timeout`` seconds
        passed first. None waits as long as the retries take.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._enqueued_seq
            self._flush_seq = max(self._flush_seq, target)
            self._cond.notify_all()
            while self._done_seq < target:
                if not self._worker.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flushes, stops the background thread and closes the channel.

        Waits at most ``timeout`` seconds (default: the client's timeout).
        Returns True if everything logged was acknowledged or given up in
        time. Rows logged afterwards are dropped. Safe to call twice.
        """
        if timeout is None:
            timeout = self._timeout
        with self._cond:
            if self._closed:
                return self._close_result
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)
        done = not self._worker.is_alive()
        with self._cond:
            self._closed = True
            self._close_result = done
            unsent = self._queued_rows + self._inflight_rows
        if not done:
            log.warning(
                "driftd_client: close() gave up after %.1fs with %d rows unsent to %s",
                timeout, unsent, self.target,
            )
        # Closing the channel also ends an RPC still in flight (CANCELLED).
        self._channel.close()
        atexit.unregister(self._atexit)
        return done

    def __enter__(self) -> "DriftClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_reference(self, features: Any = None, predictions: Any = None, *,
                      chunk_rows: int = 10000, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Replaces the reference distribution of this model version.

        Takes the same arguments as ``log()``, streams them with the
        SetReference RPC in messages of ``chunk_rows`` rows, and waits for the
        answer (deadline ``timeout``, default the client's timeout).
        Returns the SetReferenceResponse as a dict
        (``{"model", "version", "records", "features"}``).

        Raises:
            ValueError, TypeError: as ``log()``.
            DriftdError: the daemon refused (e.g. RESOURCE_EXHAUSTED for a
                reference above ingest.max_reference_records).
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows!r}")
        rows, columns = _columns.convert(
            features, predictions, pb.COLUMN_ROLE_INPUT, pb.COLUMN_ROLE_OUTPUT, self._kinds
        )
        if rows == 0:
            raise ValueError("set_reference: no rows given")
        schema = tuple((c.name, c.role, c.kind) for c in columns)
        values = [c.values for c in columns]

        def requests() -> Iterator[Any]:
            for start in range(0, rows, chunk_rows):
                part = _Slice(schema, [v[start:start + chunk_rows] for v in values],
                              min(chunk_rows, rows - start))
                yield pb.SetReferenceRequest(batch=self._record_batch([part]))

        try:
            response = self._set_reference(requests(), timeout=timeout or self._timeout)
        except grpc.RpcError as e:
            raise DriftdError("SetReference", e.code(), e.details()) from None
        with self._cond:
            for c in columns:
                self._kinds.setdefault(c.name, c.kind)
        return _message_to_dict(response)

    def status(self, version: Optional[str] = None) -> Dict[str, Any]:
        """The daemon's status of this model version, as plain dicts.

        ``version`` overrides the client's version; ``""`` asks for every
        version of the model. Returns ``{"versions": [...]}`` with field names
        as in the proto (``records_ingested``, ``reference_source``,
        ``features`` with ``role``, ``kind``, ``window_missing``...); enums
        are names like ``"COLUMN_ROLE_INPUT"``, statistics absent when not
        computed, 64-bit counters ints.

        Raises:
            DriftdError: NOT_FOUND for a model the daemon has not seen.
        """
        request = pb.GetStatusRequest(model=self.model, version=self.version if version is None else version)
        try:
            response = self._get_status(request, timeout=self._timeout)
        except grpc.RpcError as e:
            raise DriftdError("GetStatus", e.code(), e.details()) from None
        return _message_to_dict(response)

    def __repr__(self) -> str:
        return (f"DriftClient(target={self.target!r}, model={self.model!r}, version={self.version!r}, "
                f"sent_records={self.sent_records}, dropped={self.dropped}, "
                f"failed_batches={self.failed_batches})")

    # --- internals ------------------------------------------------------

    def _warn_drop(self) -> None:
        # Called with the lock held.
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL:
            self._last_drop_warning = now
            reason = "client closed" if self._closing else f"queue full ({self._queue_size} rows)"
            log.warning("driftd_client: dropping records for %s@%s: %s; %d rows dropped so far",
                        self.model, self.version, reason, self.dropped)

    def _record_batch(self, slices: List[_Slice]) -> Any:
        """One RecordBatch from slices that share a schema."""
        schema = slices[0].schema
        cols = []
        for i, (name, role, kind) in enumerate(schema):
            col = pb.Column(name=name, role=role)
            target = col.numeric.values if kind == NUMERIC else col.categorical.values
            if kind == CATEGORICAL:
                col.categorical.SetInParent()  # set the oneof even for 0 values
            else:
                col.numeric.SetInParent()
            for s in slices:
                target.extend(_columns.to_proto_values(s.values[i]))
            cols.append(col)
        return pb.RecordBatch(model=self.model, version=self.version, columns=cols)

    def _take(self) -> Tuple[List[_Slice], int]:
        """Removes up to batch_size rows from the queue (lock held).

        Returns the slices and the highest seq whose chunk was fully taken.
        """
        budget = self._batch_size
        slices: List[_Slice] = []
        done = self._done_seq
        while self._queue and budget > 0:
            chunk = self._queue[0]
            n = min(budget, chunk.rows - chunk.offset)
            if chunk.offset == 0 and n == chunk.rows:
                values = chunk.values
            else:
                values = [v[chunk.offset:chunk.offset + n] for v in chunk.values]
            slices.append(_Slice(chunk.schema, values, n))
            chunk.offset += n
            budget -= n
            self._queued_rows -= n
            if chunk.offset == chunk.rows:
                self._queue.popleft()
                done = chunk.seq
        return slices, done

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._queue:
                        head = self._queue[0]
                        if (self._closing or self._queued_rows >= self._batch_size
                                or head.seq <= self._flush_seq):
                            break
                        wait = head.enqueued + self._flush_interval - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    elif self._closing:
                        return
                    else:
                        self._cond.wait()
                slices, done = self._take()
                self._inflight_rows = sum(s.rows for s in slices)
            self._send(slices)
            with self._cond:
                self._inflight_rows = 0
                self._done_seq = max(self._done_seq, done)
                self._cond.notify_all()

    def _send(self, slices: List[_Slice]) -> None:
        # Consecutive slices with the same columns share one RecordBatch;
        # a change of columns (a caller logging another set) starts another.
        groups: List[List[_Slice]] = []
        for s in slices:
            if groups and groups[-1][0].schema == s.schema:
                groups[-1].append(s)
            else:
                groups.append([s])
        for group in groups:
            rows = sum(s.rows for s in group)
            try:
                request = pb.IngestRequest(batch=self._record_batch(group))
                response = self._call_with_retries(request)
            except grpc.RpcError as e:
                log.error("driftd_client: IngestBatch of %d rows for %s@%s failed: %s: %s",
                          rows, self.model, self.version, e.code().name, e.details())
                response = None
            except Exception:  # keep the worker alive whatever happens
                log.exception("driftd_client: could not send %d rows", rows)
                response = None
            with self._cond:
                if response is None:
                    self.failed_batches += 1
                    self.failed_records += rows
                else:
                    self.sent_records += response.records
                    self.missing_values += response.missing_values

    def _call_with_retries(self, request: Any) -> Any:
        delay = 0.1
        for attempt in range(self._max_retries + 1):
            try:
                return self._ingest_batch(request, timeout=self._timeout)
            except grpc.RpcError as e:
                if e.code() not in _RETRYABLE or attempt == self._max_retries:
                    raise
                # Full jitter, so many clients do not retry in lockstep.
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")
