"""compiled_loss: a compiler failure falls back to the eager function once and for all, saying
why; an error of the function itself (bad input) is raised as it is, compilation kept."""

import logging

import pytest
import torch

from lt_d2.classifiers import compile as loss_compile


def _broken_compiler(calls):
    def compile_(fn, **kwargs):
        def run(*args):
            calls.append(args)
            raise RuntimeError("backend crashed")

        return run

    return compile_


@pytest.fixture
def compiled(monkeypatch, caplog):
    monkeypatch.setattr(loss_compile, "_ENABLED", True)
    calls = []
    monkeypatch.setattr(torch, "compile", _broken_compiler(calls))
    caplog.set_level(logging.WARNING, logger=loss_compile.__name__)
    return calls


def test_a_compiler_failure_runs_the_eager_function_from_then_on(compiled, caplog):
    double = loss_compile.compiled_loss(lambda x: 2 * x)
    assert double(torch.tensor(3.0)).item() == 6.0
    assert double(torch.tensor(4.0)).item() == 8.0
    assert len(compiled) == 1  # the compiled function is not tried again
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: backend crashed" in warnings[0]


def test_an_error_of_the_function_itself_is_raised_and_compilation_stays_on(compiled, caplog):
    def check(x):
        if x.item() < 0:
            raise ValueError("negative input")
        return x

    loss = loss_compile.compiled_loss(check)
    with pytest.raises(ValueError, match="negative input"):
        loss(torch.tensor(-1.0))
    assert not any("torch.compile failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        loss(torch.tensor(-2.0))
    assert len(compiled) == 2  # the compiled function is still the one called first


@pytest.mark.parametrize("run", ["eager", "compiled"])
def test_log_sigmoid_is_float32_accurate_with_its_gradient(run):
    """Against log(sigmoid(z)) = -log(1 + exp(-z)) evaluated in float64 (torch.log1p, the
    reference form), over z from -100 to 100, the points where 1 + exp(-|z|) rounds to 1 in
    float32 (|z| > 16.6), and the extremes; the gradient against sigmoid(-z) in float64."""
    z = torch.cat(
        [
            torch.linspace(-100.0, 100.0, 20001),
            torch.tensor([0.0, 1e-30, -1e-30, 16.0, 16.7, 17.0, -16.7, -17.0, 3e38, -3e38]),
        ]
    ).requires_grad_()
    fn = loss_compile.log_sigmoid
    if run == "compiled":
        fn = torch.compile(fn, dynamic=True)
    value = fn(z)
    (gradient,) = torch.autograd.grad(value.sum(), z)
    z64 = z.detach().double()
    expected = torch.where(
        z64 >= 0, -torch.log1p(torch.exp(-z64)), z64 - torch.log1p(torch.exp(z64))
    )
    # float32 cannot hold |log sigmoid(z)| below its smallest normal: compared absolutely there
    scale = expected.abs().clamp(min=torch.finfo(torch.float32).tiny)
    assert ((value.double() - expected).abs() / scale).max() < 1e-6
    expected_gradient = torch.sigmoid(-z64)
    scale = expected_gradient.clamp(min=torch.finfo(torch.float32).tiny)
    assert torch.isfinite(gradient).all()
    assert ((gradient.double() - expected_gradient).abs() / scale).max() < 1e-6
