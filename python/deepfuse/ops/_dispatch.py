"""How every deepfuse op is called: a registered custom op for tracing, a direct path in eager mode.

``torch.library.custom_op`` is what torch.compile, export and ``opcheck`` need, but in eager mode its Python
dispatch (autograd wrapper, redispatch below autograd, the dynamo-disable wrapper) is most of a small call.
``fused_op`` registers the custom op as before and returns a ``FusedOp`` that, when nothing is tracing or
intercepting the call, runs the implementation directly — through a ``torch.autograd.Function`` built from
the same ``setup_context``/``backward`` when a gradient is needed. The two paths run the same code.

The custom op is kept whenever something may need to see it: torch.compile/export (``is_compiling``), any
``TorchDispatchMode`` (FakeTensorMode, make_fx, FlopCounterMode...), functorch transforms (vmap, grad),
tensor subclasses, and a recording profiler (the op's label ``deepfuse::<op>[<backend>] flops=.. bytes=..``
is entered only then).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from deepfuse.profile.labels import op_range

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_level = torch._C._functorch.peek_interpreter_stack


def _profiling() -> bool:
    return torch.autograd.profiler._is_profiler_enabled


def runs_eagerly(args: tuple) -> bool:
    """True when a call with ``args`` may skip the custom op: nothing traces, intercepts or records it."""
    if torch.compiler.is_compiling() or _dispatch_modes() or _functorch_level() is not None or _profiling():
        return False
    return all(type(a) in _PLAIN_TENSORS for a in args if isinstance(a, torch.Tensor))


def _needs_grad(args: tuple) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


FUSED_OPS: dict[str, FusedOp] = {}  # every op by name (``linear_act_fwd``...), for tools that run implementations


class FusedOp:
    """A deepfuse op: ``op(*args)`` runs the implementation directly in eager mode, else the custom op.

    ``custom_op`` is the registered ``torch.library`` op (``torch.ops.deepfuse.<name>``), for opcheck and tracing.
    """

    def __init__(self, name: str, implementation: Callable, cost: Callable[..., tuple[int, int]]):
        self.name = name
        self.implementation = implementation
        self._backend_index = list(inspect.signature(implementation).parameters).index("backend")
        self._cost = cost

        @functools.wraps(implementation)
        def labelled(*args):
            if not _profiling():
                return implementation(*args)
            with op_range(name, args[self._backend_index], *cost(*args)):
                return implementation(*args)

        self.custom_op = torch.library.custom_op(f"deepfuse::{name}", labelled, mutates_args=())
        self._function: type[torch.autograd.Function] | None = None
        functools.update_wrapper(self, implementation)
        FUSED_OPS[name] = self

    def register_fake(self, fake: Callable) -> Callable:
        return self.custom_op.register_fake(fake)

    def register_autograd(self, backward: Callable, *, setup_context: Callable) -> None:
        """The same backward for both paths: the custom op's and the eager ``autograd.Function``'s."""
        self.custom_op.register_autograd(backward, setup_context=setup_context)
        implementation = self.implementation
        self._function = type(
            f"{self.name}_function",
            (torch.autograd.Function,),
            {
                "forward": staticmethod(lambda *args: implementation(*args)),
                "setup_context": staticmethod(setup_context),
                # Backward runs the kernels' own backward ops, which have no derivative of their own.
                "backward": staticmethod(once_differentiable(backward)),
            },
        )

    def __call__(self, *args):
        if not runs_eagerly(args):
            return self.custom_op(*args)
        if self._function is not None and _needs_grad(args):
            return self._function.apply(*args)
        return self.implementation(*args)


def fused_op(name: str, *, cost: Callable[..., tuple[int, int]]) -> Callable[[Callable], FusedOp]:
    """Decorator: ``@fused_op("linear_act_fwd", cost=...)`` over an implementation whose last-but-any parameter
    named ``backend`` says which backend runs; ``cost(*args) -> (flops, min_bytes)`` labels it for profilers."""

    def wrap(implementation: Callable) -> FusedOp:
        return FusedOp(name, implementation, cost)

    return wrap


def torch_path(name: str, cost: Callable[..., tuple[int, int]], composite: Callable, *args):
    """The torch backend of op ``name`` (``<op>_fwd``): ``composite(*args)``, torch's own differentiable ops (its
    autograd in eager, traced natively under torch.compile). While a profiler records, forward and backward are
    labelled ``deepfuse::<op>_fwd[torch]`` / ``<op>_bwd[torch]`` with their cost, as the kernels are."""
    if not _profiling():
        return composite(*args)
    flops, min_bytes = cost(*args)
    labels = (name, name.removesuffix("_fwd") + "_bwd", flops, min_bytes)
    return _LabelledTorchPath.apply(labels, composite, *args)


class _LabelledTorchPath(torch.autograd.Function):
    """``composite(*args)`` inside profiler labels: the forward builds torch's own graph on detached inputs, the
    backward runs it (``torch.autograd.grad``) inside the backward label. Only while a profiler records."""

    @staticmethod
    def forward(ctx, labels, composite, *args):
        fwd_name, _, flops, min_bytes = labels
        inputs = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
        with torch.enable_grad(), op_range(fwd_name, "torch", flops, min_bytes):
            outputs = composite(*inputs)
        ctx.labels, ctx.graph = labels, (inputs, outputs if isinstance(outputs, tuple) else (outputs,))
        return tuple(o.detach() for o in ctx.graph[1]) if isinstance(outputs, tuple) else outputs.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        _, bwd_name, flops, min_bytes = ctx.labels
        inputs, outputs = ctx.graph
        wanted = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.requires_grad]
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if g is not None and o.requires_grad]
        grads = [None] * len(inputs)
        if wanted and pairs:
            with op_range(bwd_name, "torch", 2 * flops, 2 * min_bytes):
                found = torch.autograd.grad(
                    [o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs], allow_unused=True
                )
            for i, grad in zip(wanted, found, strict=True):
                grads[i] = grad
        return (None, None, *grads)
