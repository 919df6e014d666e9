"""Side-by-side timing: peers at their defaults, a pause before every block of calls."""

import numpy as np
import pytest

from sparsec import demo, timing


def _matmul_model():
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), w


def test_ort_session_keeps_spin_waiting_on_and_takes_any_model_form(tmp_path):
    model, w = _matmul_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.ones((2, 3), np.float32)
    for form in (model, model.SerializeToString(), path, str(path)):
        sess = timing.ort_session(form, threads=1)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ w)
        opts = sess.get_session_options()
        with pytest.raises(RuntimeError):  # never set: onnxruntime's default (spinning)
            opts.get_session_config_entry("session.intra_op.allow_spinning")
        assert opts.intra_op_num_threads == 1


def test_every_block_of_calls_starts_after_a_pause(monkeypatch):
    events = []
    monkeypatch.setattr(demo, "settle", lambda: events.append("pause"))
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    ms = demo.time_side_by_side(fns, repeat=4, rounds=2)
    assert set(ms) == {"a", "b"}
    blocks = events[2:]  # after one warm-up call each
    # each block: the pause, one untimed call, then the timed calls
    assert blocks == (["pause"] + ["a"] * 3 + ["pause"] + ["b"] * 3) * 2


def test_benchmarks_interleave_with_pauses(monkeypatch):
    from benchmarks import kernels, models

    for mod, run in ((models, lambda f: models.interleaved_rounds(f, budget_s=0.01, rounds=2)),
                     (kernels, lambda f: kernels.interleaved(f, rounds=2))):
        pauses = []
        monkeypatch.setattr(mod, "settle", lambda p=pauses: p.append(1))
        run({"a": lambda: None, "b": lambda: None})
        assert len(pauses) == 4, mod.__name__


def _busy_thread(seconds: float):
    import threading
    import time

    stop = threading.Event()

    def spin():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not stop.is_set():
            pass

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    return t, stop


def test_settle_waits_until_other_threads_go_quiet():
    import time

    t, _ = _busy_thread(0.3)  # a pool still spinning after its engine's last call
    start = time.perf_counter()
    timing.settle()
    waited = time.perf_counter() - start
    t.join()
    # most of the 0.3 s (a loaded CI machine may starve the thread for a window)
    assert waited >= 0.1, waited
    start = time.perf_counter()
    timing.settle()  # nothing busy now
    assert time.perf_counter() - start < timing.PAUSE_S + 0.2


def test_settle_gives_up_after_quiet_max(monkeypatch):
    import time

    monkeypatch.setattr(timing, "QUIET_MAX_S", 0.1)
    t, stop = _busy_thread(5.0)  # never quiet in time
    start = time.perf_counter()
    timing.settle()
    waited = time.perf_counter() - start
    stop.set()
    t.join()
    assert 0.1 <= waited < 0.5, waited


def test_tvm_workers_spin_briefly_unless_the_environment_says(monkeypatch):
    import os

    from sparsec.codegen.tvm import runner

    monkeypatch.delenv("TVM_THREAD_POOL_SPIN_COUNT", raising=False)
    runner.configure_threads(None)
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == str(runner.SPIN_COUNT)
    monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", "7")
    runner.configure_threads(None)
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "7"
