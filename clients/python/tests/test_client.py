"""DriftClient against the real driftd binary (see conftest.py)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import numpy as np
import pandas as pd
import pytest

from conftest import wait_until
from driftd_client import DriftClient, DriftdError

INPUT, OUTPUT = "COLUMN_ROLE_INPUT", "COLUMN_ROLE_OUTPUT"


def only_version(status):
    (version,) = status["versions"]
    return version, {f["name"]: f for f in version["features"]}


def roles_and_kinds(features):
    return {name: (f["role"], f["kind"]) for name, f in features.items()}


def test_log_dicts_of_lists(daemon, model_name):
    # batch_size 35 with chunks of 10 rows splits chunks across batches;
    # flush_interval 60 s means only flush() can have sent the tail.
    with DriftClient(daemon.grpc_addr, model=model_name, version="v1",
                     batch_size=35, flush_interval=60) as client:
        for i in range(0, 120, 10):
            queued = client.log(
                features={"age": list(range(i, i + 10)), "country": ["DE", "FR"] * 5,
                          "member": [True, False] * 5},
                predictions={"score": [0.25] * 10},
            )
            assert queued == 10
        assert client.flush(timeout=10)
        assert (client.sent_records, client.dropped, client.failed_batches) == (120, 0, 0)
        status = client.status()

    version, features = only_version(status)
    assert (version["model"], version["version"]) == (model_name, "v1")
    assert version["records_ingested"] == 120
    # The first 50 rows formed the warm-up reference and stay out of the
    # windows.
    assert version["window_records"] == 70
    assert roles_and_kinds(features) == {
        "age": (INPUT, "numeric"),
        "country": (INPUT, "categorical"),
        "member": (INPUT, "numeric"),
        "score": (OUTPUT, "numeric"),
    }
    assert all(f["window_samples"] == 70 and f["window_missing"] == 0 for f in features.values())


def test_log_numpy_arrays(daemon, model_name):
    n = 64
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as client:
        assert client.log(
            features={
                "i32": np.arange(n, dtype=np.int32),
                "f32": np.linspace(0, 1, n, dtype=np.float32),
                "flag": np.arange(n) % 2 == 0,
                "city": np.array(["Berlin", "Paris"] * (n // 2)),  # dtype <U6
            },
            predictions={"proba": np.full(n, 0.5)},
        ) == n
        assert client.flush(timeout=10)
        assert client.sent_records == n
        version, features = only_version(client.status())
    assert version["version"] == "default"
    assert version["records_ingested"] == n
    assert roles_and_kinds(features) == {
        "i32": (INPUT, "numeric"),
        "f32": (INPUT, "numeric"),
        "flag": (INPUT, "numeric"),
        "city": (INPUT, "categorical"),
        "proba": (OUTPUT, "numeric"),
    }


def test_log_pandas_dataframe(daemon, model_name):
    frame = pd.DataFrame({
        "amount": [10.0, np.nan, 30.0, 40.0],
        "count": [1, 2, 3, 4],
        "nullable": pd.array([1, None, 3, None], dtype="Int64"),
        "country": ["DE", None, "FR", "DE"],
        "segment": pd.Categorical(["a", "b", "a", "b"]),
        "vip": [True, False, False, True],
    })
    predictions = pd.DataFrame({"label": ["yes", "no", "no", "yes"], "proba": [0.9, 0.1, 0.2, 0.8]})
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as client:
        for _ in range(5):
            assert client.log(features=frame, predictions=predictions) == 4
        assert client.flush(timeout=10)
        assert client.sent_records == 20
        version, features = only_version(client.status())
    assert version["records_ingested"] == 20
    assert roles_and_kinds(features) == {
        "amount": (INPUT, "numeric"),
        "count": (INPUT, "numeric"),
        "nullable": (INPUT, "numeric"),
        "country": (INPUT, "categorical"),
        "segment": (INPUT, "categorical"),
        "vip": (INPUT, "numeric"),
        "label": (OUTPUT, "categorical"),
        "proba": (OUTPUT, "numeric"),
    }
    missing = {name: f["window_missing"] for name, f in features.items()}
    assert missing == {"amount": 5, "count": 0, "nullable": 10, "country": 5, "segment": 0,
                       "vip": 0, "label": 0, "proba": 0}
    # The client adds up the missing counts of the IngestBatch answers.
    assert client.missing_values == sum(missing.values())


def test_none_and_nan_are_missing_values(daemon, model_name):
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as client:
        client.log(
            features={"x": [1.0, None, math.nan, math.inf, 2.0, 3],
                      "c": ["a", None, "", "b", math.nan, "a"]},
            predictions={"y": [None, 0.5, 0.5, 0.5, 0.5, 0.5]},
        )
        assert client.flush(timeout=10)
        version, features = only_version(client.status())
    assert version["records_ingested"] == 6
    assert {n: (f["window_samples"], f["window_missing"]) for n, f in features.items()} == {
        "x": (3, 3), "c": (3, 3), "y": (5, 1)}
    assert features["c"]["kind"] == "categorical"
    # The IngestBatch answers counted the same missing values (the daemon
    # includes empty categories, though the proto comment says "numeric").
    assert client.missing_values == 7


def test_single_row_of_scalars(daemon, model_name):
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as client:
        for i in range(3):
            assert client.log(features={"x": float(i), "c": "DE", "n": np.int64(i)},
                              predictions={"y": i % 2 == 0}) == 1
        assert client.flush(timeout=10)
        version, features = only_version(client.status())
    assert version["records_ingested"] == 3
    assert roles_and_kinds(features) == {"x": (INPUT, "numeric"), "c": (INPUT, "categorical"),
                                         "n": (INPUT, "numeric"), "y": (OUTPUT, "numeric")}


def test_rows_wait_for_a_full_batch_or_the_interval(daemon, model_name):
    client = DriftClient(daemon.grpc_addr, model=model_name, batch_size=10, flush_interval=60)
    try:
        client.log(features={"x": list(range(25))})
        # Two full batches leave at once; the last 5 rows wait for the interval.
        wait_until(lambda: client.sent_records == 20)
        time.sleep(0.3)
        assert client.sent_records == 20
        assert only_version(client.status())[0]["records_ingested"] == 20
        assert client.flush(timeout=10)
        assert client.sent_records == 25
    finally:
        client.close()

    with DriftClient(daemon.grpc_addr, model=model_name, version="timed",
                     batch_size=1000, flush_interval=0.2) as timed:
        timed.log(features={"x": [1.0, 2.0]})
        # No flush: the interval alone sends the partial batch.
        wait_until(lambda: timed.sent_records == 2, timeout=10)
        assert only_version(timed.status())[0]["records_ingested"] == 2


def test_concurrent_loggers(daemon, model_name):
    with DriftClient(daemon.grpc_addr, model=model_name, batch_size=64, flush_interval=60) as client:
        def worker(k):
            for i in range(50):
                client.log(features={"x": [float(k), float(i)], "who": [f"t{k}", f"t{k}"]})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert client.flush(timeout=10)
        assert client.sent_records == 400
        assert only_version(client.status())[0]["records_ingested"] == 400


def test_set_reference_streams_chunks_and_sets_the_source(daemon, model_name):
    n = 25_000  # three SetReference messages of at most 10,000 rows
    rng = np.random.default_rng(7)
    with DriftClient(daemon.grpc_addr, model=model_name, version="v2") as client:
        response = client.set_reference(
            features={"x": rng.normal(size=n), "c": rng.choice(["a", "b", "c"], size=n)},
            predictions={"p": rng.uniform(size=n)},
        )
        assert response == {"model": model_name, "version": "v2", "records": n, "features": 3}
        version, features = only_version(client.status())
    assert version["reference_records"] == n
    assert version["reference_source"] == "set_reference"
    assert version["records_ingested"] == 0
    assert {name: f["reference_samples"] for name, f in features.items()} == {"x": n, "c": n, "p": n}
    assert roles_and_kinds(features) == {"x": (INPUT, "numeric"), "c": (INPUT, "categorical"),
                                         "p": (OUTPUT, "numeric")}


def test_set_reference_then_log_evaluates_against_it(daemon, model_name):
    rng = np.random.default_rng(1)
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as client:
        client.set_reference(features={"x": rng.normal(size=500)}, chunk_rows=128)
        # The window is far from the reference: the daemon (evaluating every
        # 100 ms) must find drift, with statistics, on "x".
        client.log(features={"x": rng.normal(loc=5.0, size=200)})
        assert client.flush(timeout=10)

        def drifted():
            version, features = only_version(client.status())
            return features["x"]["verdict"] == "VERDICT_DRIFT" and version

        version = wait_until(drifted, timeout=10)
    assert version["reference_source"] == "set_reference"
    assert version["reference_records"] == 500
    x = {f["name"]: f for f in version["features"]}["x"]
    assert x["psi"] > 0.2 and x["ks_statistic"] > 0.5


def test_full_queue_drops_and_counts_without_blocking(silent_server, caplog):
    # The server accepts connections and never answers, so the worker's
    # first IngestBatch hangs for `timeout` seconds while the caller logs.
    caplog.set_level(logging.WARNING, logger="driftd_client")
    client = DriftClient(silent_server, model="stuck", batch_size=10, flush_interval=60,
                         queue_size=50, timeout=5.0, max_retries=0)
    start = time.monotonic()
    queued = sum(client.log(features={"x": [float(i)]}) for i in range(200))
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"log() blocked: 200 calls took {elapsed:.2f}s"
    assert queued + client.dropped == 200
    # 50 rows fit in the queue, plus at most the 10 the worker took out
    # before its send hung.
    assert 140 <= client.dropped <= 150, client.dropped
    assert client.sent_records == 0
    warnings = [r for r in caplog.records if "dropping records" in r.getMessage()]
    assert len(warnings) == 1, "drop warnings are rate-limited"
    assert "queue full (50 rows)" in warnings[0].getMessage()

    start = time.monotonic()
    assert client.close(timeout=0.5) is False  # cannot flush to a silent server
    assert time.monotonic() - start < 3.0
    # Closing the channel cancelled the hung call: every queued row ends up
    # accounted as failed, none as sent.
    wait_until(lambda: client.failed_records == queued, timeout=10)
    assert client.sent_records == 0
    assert client.log(features={"x": [1.0]}) == 0
    assert client.dropped + queued == 201


CHILD = textwrap.dedent("""
    import os, sys
    from driftd_client import DriftClient

    client = DriftClient(sys.argv[1], model=sys.argv[2], flush_interval=60)
    client.log(features={"x": list(range(100))}, predictions={"y": [0.5] * 100})
    if sys.argv[3] == "hard-exit":
        os._exit(0)  # skips atexit: the control case
    # Falling off the end without close(): atexit must flush.
""")


@pytest.mark.parametrize("ending", ["normal-exit", "hard-exit"])
def test_interpreter_exit_flushes(daemon, model_name, ending, tmp_path):
    # cwd elsewhere: `python -c` puts the cwd first on sys.path, and the
    # source tree (without generated modules) must not shadow the install.
    result = subprocess.run([sys.executable, "-c", CHILD, daemon.grpc_addr, model_name, ending],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status_client = DriftClient(daemon.grpc_addr, model=model_name)
    try:
        if ending == "normal-exit":
            assert only_version(status_client.status())[0]["records_ingested"] == 100
        else:
            # Without atexit nothing was sent (flush_interval is 60 s): this
            # shows the normal-exit case measures the atexit flush.
            with pytest.raises(DriftdError) as err:
                status_client.status()
            assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        status_client.close()


def test_validation_errors_name_the_column_and_queue_nothing(daemon, model_name):
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as client:
        with pytest.raises(ValueError, match=r"column 'b' has 2 rows, column 'a' has 3"):
            client.log(features={"a": [1, 2, 3], "b": [1, 2]})
        with pytest.raises(ValueError, match=r"column 'score' has 1 rows, column 'a' has 2"):
            client.log(features={"a": [1, 2]}, predictions={"score": [0.5]})
        with pytest.raises(ValueError, match=r"column 'bad name'"):
            client.log(features={"bad name": [1]})
        with pytest.raises(ValueError, match=r"column 'a': given twice"):
            client.log(features={"a": [1]}, predictions={"a": [1]})
        with pytest.raises(ValueError, match=r"column 'm': expected one value per row \(1-D\)"):
            client.log(features={"m": np.zeros((2, 2))})
        with pytest.raises(ValueError, match=r"column 's': a single value"):
            client.log(features={"s": 1.0, "l": [1.0, 2.0]})
        with pytest.raises(TypeError, match=r"column 's': expected a list"):
            client.log(features={"s": {"k": 1}})
        with pytest.raises(ValueError, match="nothing to log"):
            client.log()
        assert client.log(features={"k": [1.0]}) == 1
        with pytest.raises(ValueError, match=r"column 'k': was sent as numeric before, got categorical"):
            client.log(features={"k": ["x"]})
        assert client.flush(timeout=10)
        # Only the one valid row reached the daemon.
        assert (client.sent_records, client.failed_batches) == (1, 0)
        assert only_version(client.status())[0]["records_ingested"] == 1

    with pytest.raises(ValueError, match=r"model 'no spaces'"):
        DriftClient(daemon.grpc_addr, model="no spaces")
    with pytest.raises(ValueError, match="model is required"):
        DriftClient(daemon.grpc_addr)


def test_rejected_batch_is_counted_as_failed(daemon, model_name, caplog):
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as first:
        first.log(features={"k": [1.0, 2.0]})
        assert first.flush(timeout=10)
    # A second client does not know "k" is numeric; the daemon refuses the
    # batch with INVALID_ARGUMENT, which is not retried.
    with DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60) as second:
        second.log(features={"k": ["a", "b", "c"]})
        assert second.flush(timeout=10)
        assert (second.sent_records, second.failed_batches, second.failed_records) == (0, 1, 3)
        assert only_version(second.status())[0]["records_ingested"] == 2
    assert any("INVALID_ARGUMENT" in r.getMessage() and "k" in r.getMessage() for r in caplog.records)


def test_status_of_unknown_model_raises_not_found(daemon, model_name):
    with DriftClient(daemon.grpc_addr, model=model_name) as client:
        with pytest.raises(DriftdError) as err:
            client.status()
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert model_name in str(err.value) or "not found" in str(err.value).lower()


def test_close_flushes_and_later_logs_are_dropped(daemon, model_name):
    client = DriftClient(daemon.grpc_addr, model=model_name, flush_interval=60)
    client.log(features={"x": [1.0, 2.0, 3.0]})
    assert client.close() is True
    assert client.sent_records == 3
    assert client.log(features={"x": [4.0]}) == 0
    assert client.dropped == 1
    assert client.close() is True  # idempotent
    with DriftClient(daemon.grpc_addr, model=model_name) as check:
        assert only_version(check.status())[0]["records_ingested"] == 3
