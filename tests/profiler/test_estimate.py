"""The analytic estimator against hand-computed bytes and FLOPs."""
import pytest

import dlprimer as dp
from dlprimer.profiler import bytes_per_param, bytes_per_param_table, state_arrays
from _toy_modules import Dropout, Linear, Seq, Tanh


def test_small_mlp_bytes_and_flops_by_hand():
    # 784-256-10, batch 128, float32, ReLU, Adam
    B, i, h, o = 128, 784, 256, 10
    e = dp.estimate([i, h, o], B, optimizer="adam", dtype="float32")
    P = i * h + h + h * o + o
    assert e.params == P == 203_530
    assert e.param_bytes == e.grad_bytes == 4 * P
    assert e.optimizer_bytes == 8 * P                       # m and v
    assert e.bytes_per_param == 16
    assert e.input_bytes == 4 * B * i
    # saved: ReLU output (also layer 2's matmul input) + softmax probs
    assert e.activation_bytes == 4 * (B * h + B * o)
    assert e.total_bytes == 16 * P + 4 * B * i + 4 * (B * h + B * o)
    # forward: matmuls + bias adds + relu; backward: layer 1 dW only (input needs no grad)
    assert e.fwd_flops == 2 * B * i * h + B * h + B * h + 2 * B * h * o + B * o
    assert e.bwd_flops == 2 * B * i * h + B * h + B * h + 4 * B * h * o + B * o


def test_gelu_keeps_its_input_and_dropout_a_new_buffer():
    B = 8
    e = dp.estimate([16, 32, 32, 4], B, activation="gelu", optimizer="sgd", loss_saves=0)
    # per hidden layer: GELU input z and its output h (kept by the next matmul)
    assert e.activation_bytes == 4 * B * (2 * 32 + 2 * 32)
    assert e.optimizer_bytes == 0 and e.bytes_per_param == 8


def test_estimate_reads_a_module(rng):
    net = Seq(Linear(10, 20, bias=True, rng=rng), Tanh(), Dropout(0.5), Linear(20, 3, bias=True, rng=rng))
    e = dp.estimate(net, (5, 10), optimizer="momentum", dtype="float64")
    P = 10 * 20 + 20 + 20 * 3 + 3
    assert e.params == P
    assert e.optimizer_bytes == 8 * P and e.bytes_per_param == 24
    # tanh output kept, dropout output kept by the next matmul, probs
    assert e.activation_bytes == 8 * 5 * (20 + 20 + 3)


def test_bytes_per_param_conventions():
    assert [bytes_per_param(o, "float32") for o in ("sgd", "momentum", "adam")] == [8, 12, 16]
    assert bytes_per_param("adam", "float16") == 16          # 2 + 2 + 4 master + 4 + 4
    assert bytes_per_param("adam", "bfloat16", master_weights=False) == 8
    assert bytes_per_param("adam", "float64") == 32
    t = bytes_per_param_table()
    assert t["adam"]["float32"] == 16 and t["sgd"]["mixed fp16/bf16 + fp32 master"] == 8


def test_chapter_12_bytes_vs_adam_16_is_explicit():
    e = dp.estimate([1000, 1000], 1)
    d = e.to_dict()
    assert d["chapter_adam_bytes_per_param"] == 12 and d["adam_float32_bytes_per_param"] == 16
    assert "12 bytes/param" in e.table() and "16 bytes/param" in e.table()
    assert e.chapter_bytes == 12 * e.params


def test_optimizer_objects_and_declared_state():
    class SGD:
        param_groups = [{"momentum": 0.9}]

    class Custom:
        state_bytes_per_param = 12

    assert state_arrays(SGD()) == 1
    assert state_arrays(Custom()) == 3
    assert state_arrays(None) == 0


def test_errors_name_the_problem(rng):
    with pytest.raises(ValueError, match="unknown optimizer"):
        dp.estimate([4, 4], 2, optimizer="adagrad")
    with pytest.raises(ValueError, match="dtype"):
        dp.estimate([4, 4], 2, dtype="int8")
    with pytest.raises(ValueError, match="layer sizes"):
        dp.estimate([4], 2)
    with pytest.raises(ValueError, match="batch"):
        dp.estimate([4, 4], "big")
    with pytest.raises(ValueError, match="batch size must be positive"):
        dp.estimate([4, 4], 0)
    with pytest.raises(TypeError, match="Module or a list"):
        dp.estimate(object(), 2)
    with pytest.raises(ValueError, match="expecting 7 features"):
        dp.estimate(Seq(Linear(4, 5, rng=rng), Linear(7, 2, rng=rng)), 2)

    class Odd(Seq):
        pass

    class Conv(Linear):
        pass

    c = Conv(3, 3, rng=rng)
    del c.in_features
    with pytest.raises(ValueError, match="no analytic model for layer Conv"):
        dp.estimate(Seq(Linear(3, 3, rng=rng), c), 2)
    with pytest.raises(ValueError, match="cannot tell"):
        state_arrays(object())


def test_reads_state_from_dlprimer_optimizers():
    import dlprimer.nn as nn
    from dlprimer import optim
    net = nn.Linear(6, 3)
    assert state_arrays(optim.Adam(nn.Linear(6, 3).parameters())) == 2
    assert state_arrays(optim.SGD(nn.Linear(6, 3).parameters(), lr=0.1)) == 0
    assert state_arrays(optim.SGD(nn.Linear(6, 3).parameters(), lr=0.1, momentum=0.9)) == 1
    assert state_arrays(optim.Adam) == 2          # the class, by name
    lin64 = nn.Linear(6, 3)
    for p in lin64.parameters():
        p.data = p.data.astype("float64")
    assert state_arrays(optim.AdamW(lin64.parameters())) == 2
    e = dp.estimate(net, 4, optimizer=optim.Adam(net.parameters()))
    assert e.optimizer_bytes == 8 * e.params and e.bytes_per_param == 16
