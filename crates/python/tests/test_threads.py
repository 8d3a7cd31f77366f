"""One session run from 8 threads at once (run releases the GIL), every result checked."""

import threading

import numpy as np

import kiln
from conftest import assert_close, load_case


def test_one_session_from_eight_threads():
    model, feed, _ = load_case("mobilenetv2_torch")
    sess = kiln.InferenceSession(model, intra_op_num_threads=2)
    name = sess.get_inputs()[0].name
    base = feed[name]
    # Each thread feeds its own input, so a mix-up between concurrent runs would show.
    inputs = [base * (1.0 + 0.1 * t) for t in range(8)]
    want = [sess.run(None, {name: x})[0] for x in inputs]
    errors = []

    def work(t):
        try:
            for _ in range(10):
                (got,) = sess.run(None, {name: inputs[t]})
                np.testing.assert_array_equal(got, want[t])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((t, e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert_close([want[0]], sess.run(None, {name: base}))
