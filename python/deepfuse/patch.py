"""deepfuse.patch(model) / deepfuse.unpatch(model): put deepfuse's fused layers into an existing model, in place.

    report = deepfuse.patch(model)    # before building the optimizer, before DDP and torch.compile
    print(report)                     # what was replaced (by qualified name), what was skipped and why
    deepfuse.unpatch(model)           # plain torch modules again, same state_dict

``patch`` walks the model instance (torch's classes are never touched) and swaps, wherever torch's own class is
used:

- ``nn.Linear`` → ``deepfuse.nn.FusedLinear``; inside an ``nn.Sequential`` the activation module right after it
  (ReLU, LeakyReLU(0.01), GELU (erf or tanh), SiLU, Sigmoid, Tanh) is fused into it.
- ``nn.Conv2d`` → ``FusedConv2d`` (activation fused as above), or inside an ``nn.Sequential``
  Conv2d → BatchNorm2d [→ activation] → ``FusedConvBN2d``: in eval BatchNorm's running statistics are folded into
  the one fused convolution; in training the convolution runs fused, then torch's own BatchNorm (batch
  statistics; running statistics and ``num_batches_tracked`` update exactly as torch's), then the activation.
- ``nn.LSTM``, ``nn.LSTMCell``, ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` → their deepfuse drop-ins.

What stays the same: every ``nn.Parameter`` object and buffer tensor (an optimizer built before keeps working, and
``requires_grad``, device and dtype are untouched), the state_dict's keys and values (a checkpoint saved before
patching loads after, and the reverse), the training flag, hooks registered on a replaced module (moved with it;
their handles still remove them), and attributes you set on it. A fused BatchNorm2d stays where it was, the same
object (still an ``nn.BatchNorm2d``, so ``isinstance``-based weight-decay groups or BN freezing still find it): only
its forward becomes a pass-through, because the convolution before it applies it. A fused activation's slot holds
a ``ConsumedActivation`` pass-through (no state) that keeps the original module for ``unpatch``.

Left as is, and listed in the report with the reason: subclasses of these layers (their own forward or methods
would be lost; their children are still patched), parametrized / weight-normed / pruned layers, uninitialised lazy
layers, TorchScript modules, dtypes other than float32, float16, bfloat16 and float64, configurations a deepfuse
module's constructor rejects (its message is the reason), modules excluded by ``exclude=``, deepfuse modules
(already patched). An activation or BatchNorm is not fused (but still runs) when it is not one deepfuse fuses, when
the layer before it or it has forward/backward hooks (they would see a different tensor), or when either is shared
by several parents.

Caveats:
- Patch before building the optimizer, before wrapping in ``DistributedDataParallel`` and before
  ``torch.compile``. Because the Parameter objects are kept, an optimizer built before keeps working with its state
  (tested). A DDP wrapper built before registered its gradient hooks on those same Parameter objects, so it should
  keep synchronising, but that is untested: wrap after patching. Compile after patching (a graph compiled before
  was traced through the old modules). FSDP replaces the parameters when it wraps: patch before.
- A fused group only means something inside its ``nn.Sequential``: calling ``seq[0]`` alone now returns the
  activated (and normalised) output, and ``seq[1]`` is a pass-through; a slice of the Sequential that cuts a fused
  group keeps the fused math. ``unpatch`` first if you need the pieces.
- Convert to ``nn.SyncBatchNorm`` before patching. Replacing a fused BatchNorm2d afterwards (e.g. by
  ``convert_sync_batchnorm``) makes the convolution raise a clear error instead of normalising twice.
- ``nn.TransformerEncoder``'s nested-tensor fast path cannot call the deepfuse layer, so patch sets
  ``use_nested_tensor = False`` on an encoder whose layers it replaced (``unpatch`` restores it).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.utils import parametrize

from deepfuse import nn as dfnn
from deepfuse.nn.consumed import ConsumedActivation, ConsumedBatchNorm2d
from deepfuse.nn.conv import FusedConvBN2d
from deepfuse.ops.activations import LEAKY_RELU_SLOPE, activation_name

__all__ = [
    "ConsumedActivation",
    "ConsumedBatchNorm2d",
    "FusedConvBN2d",
    "PatchEntry",
    "PatchReport",
    "patch",
    "unpatch",
]

# The layer kinds patch knows, most specific first (isinstance decides the kind), and the deepfuse class of each.
_KINDS = (nn.TransformerEncoderLayer, nn.MultiheadAttention, nn.LSTM, nn.LSTMCell, nn.Conv2d, nn.Linear)
_DEEPFUSE_CLASS = {
    nn.Linear: dfnn.FusedLinear,
    nn.Conv2d: dfnn.FusedConv2d,
    nn.LSTM: dfnn.LSTM,
    nn.LSTMCell: dfnn.LSTMCell,
    nn.MultiheadAttention: dfnn.MultiheadAttention,
    nn.TransformerEncoderLayer: dfnn.TransformerEncoderLayer,
}
# torch's own classes patch replaces. NonDynamicallyQuantizableLinear is torch's nn.Linear twin (a quantization
# marker, same forward), used by nn.MultiheadAttention.out_proj.
_REPLACEABLE = frozenset((*_DEEPFUSE_CLASS, NonDynamicallyQuantizableLinear))
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_HOOK_DICTS = (
    "_backward_pre_hooks",
    "_backward_hooks",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_RUN_HOOK_DICTS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_pre_hooks")
_FUSED_ACTIVATIONS = "ReLU, LeakyReLU(0.01), GELU, SiLU, Sigmoid, Tanh"


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchEntry:
    """One line of a report: the module's qualified name ("" is the model itself), what it was, and what it
    became (replaced), why it was left (skipped) or what was changed (notes)."""

    name: str
    module: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name or '<model>'}: {self.module} {self.detail}"


@dataclass
class PatchReport:
    """What ``patch`` / ``unpatch`` did. ``print(report)`` lists it; ``replaced``, ``skipped`` and ``notes``
    hold the entries."""

    action: str
    replaced: list[PatchEntry] = field(default_factory=list)
    skipped: list[PatchEntry] = field(default_factory=list)
    notes: list[PatchEntry] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"deepfuse.{self.action}: {len(self.replaced)} replaced, {len(self.skipped)} skipped"]
        for title, entries in (("replaced", self.replaced), ("skipped", self.skipped), ("notes", self.notes)):
            if entries:
                lines.append(f"{title}:")
                lines.extend(f"  {entry}" for entry in entries)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Modules patch puts in
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    """Kept on each module patch built (``_deepfuse_patch``): what it replaced, and the user attributes it took over."""

    original_type: type
    extra_keys: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Building a module of another class from an existing one, taking over its state
# ---------------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """Why a module cannot be converted (reported as skipped)."""


def _class_name(cls: type) -> str:
    """torch.nn.Linear, deepfuse.nn.FusedLinear, deepfuse.nn.FusedConvBN2d: where users find the class."""
    for namespace, path in ((dfnn, "deepfuse.nn"), (nn, "torch.nn")):
        if getattr(namespace, cls.__name__, None) is cls:
            return f"{path}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _kind(module: nn.Module) -> type | None:
    return next((kind for kind in _KINDS if isinstance(module, kind)), None)


def _is_deepfuse(module: nn.Module) -> bool:
    return type(module).__module__.startswith("deepfuse.")


def _has_run_hooks(module: nn.Module) -> bool:
    return any(module.__dict__.get(name) for name in _RUN_HOOK_DICTS)


def _build_linear(old, cls, activation):
    extra = {} if activation is None else {"activation": activation}
    return cls(
        old.in_features, old.out_features, bias=old.bias is not None, device="meta", dtype=old.weight.dtype, **extra
    )


def _build_conv(old, cls, activation):
    extra = {} if activation is None else {"activation": activation}
    return cls(
        old.in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device="meta",
        dtype=old.weight.dtype,
        **extra,
    )


def _build_lstm(old, cls, activation):
    return cls(
        old.input_size,
        old.hidden_size,
        num_layers=old.num_layers,
        bias=old.bias,
        batch_first=old.batch_first,
        dropout=old.dropout,
        bidirectional=old.bidirectional,
        proj_size=old.proj_size,
        device="meta",
        dtype=old.weight_ih_l0.dtype,
    )


def _build_lstm_cell(old, cls, activation):
    return cls(old.input_size, old.hidden_size, bias=old.bias, device="meta", dtype=old.weight_ih.dtype)


def _build_mha(old, cls, activation):
    return cls(
        old.embed_dim,
        old.num_heads,
        dropout=old.dropout,
        bias=old.in_proj_bias is not None,
        add_bias_kv=old.bias_k is not None,
        add_zero_attn=old.add_zero_attn,
        kdim=old.kdim,
        vdim=old.vdim,
        batch_first=old.batch_first,
        device="meta",
        dtype=old.out_proj.weight.dtype,
    )


def _build_encoder_layer(old, cls, activation):
    return cls(
        old.self_attn.embed_dim,
        old.self_attn.num_heads,
        dim_feedforward=old.linear1.out_features,
        dropout=old.dropout.p,
        activation=old.activation,
        layer_norm_eps=old.norm1.eps,
        batch_first=old.self_attn.batch_first,
        norm_first=old.norm_first,
        bias=old.linear1.bias is not None,
        device="meta",
        dtype=old.linear1.weight.dtype,
    )


_BUILDERS = {
    nn.Linear: _build_linear,
    nn.Conv2d: _build_conv,
    nn.LSTM: _build_lstm,
    nn.LSTMCell: _build_lstm_cell,
    nn.MultiheadAttention: _build_mha,
    nn.TransformerEncoderLayer: _build_encoder_layer,
}


def _check_dtypes(module: nn.Module) -> None:
    for name, tensor in module.named_parameters():
        if tensor.dtype not in _DTYPES:
            raise _Unsupported(
                f"parameter {name} is {tensor.dtype} (deepfuse runs float32, float16, bfloat16, "
                "and float64 on the torch backend)"
            )


def _check_same_structure(old: nn.Module, new: nn.Module) -> None:
    for what in ("_parameters", "_buffers", "_modules"):
        theirs, ours = getattr(old, what), getattr(new, what)
        if list(theirs) != list(ours) or any((theirs[k] is None) != (ours[k] is None) for k in ours):
            present = [k for k, v in theirs.items() if v is not None]
            expected = [k for k, v in ours.items() if v is not None]
            hint = " (weight_norm, pruning or another reparametrization?)" if what == "_parameters" else ""
            raise _Unsupported(f"its {what[1:]} {present} are not those of {type(new).__name__} {expected}{hint}")


def _convert(old: nn.Module, cls: type, activation: str | None, patching: bool) -> nn.Module:
    """A ``cls`` module built like ``old`` that takes over old's state: the same Parameter objects and buffer
    tensors, children of unchanged class moved as they are, the others converted, hooks, training flag and
    user attributes. Raises _Unsupported with the reason when it cannot."""
    kind = _kind(old)
    if patching:
        _check_dtypes(old)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constructor warnings (e.g. LSTM dropout with one layer) were seen
            new = _BUILDERS[kind](old, cls, activation)
    except (NotImplementedError, ValueError) as error:
        raise _Unsupported(str(error)) from None
    _check_same_structure(old, new)
    for name, child in old._modules.items():
        target = new._modules[name]
        if child is None or type(child) is type(target):
            new._modules[name] = child
        elif patching and type(child) not in _REPLACEABLE:
            raise _Unsupported(f"its child {name!r} is a {type(child).__name__}, not torch's own class: left as is")
        elif _kind(child) is not None and _kind(child) is _kind(target):
            fused = getattr(target, "activation", None)  # e.g. deepfuse's encoder layer fuses linear1's activation
            new._modules[name] = _convert(child, type(target), fused if isinstance(fused, str) else None, patching)
        else:
            raise _Unsupported(
                f"its child {name!r} is {type(child).__name__}, where {cls.__name__} has {type(target).__name__}"
            )
    for name, parameter in old._parameters.items():
        if parameter is not None:
            setattr(new, name, parameter)  # setattr: nn.LSTM keeps its _flat_weights in step
    for name, buffer in old._buffers.items():
        new._buffers[name] = buffer
    new._non_persistent_buffers_set = set(old._non_persistent_buffers_set)
    for name in _HOOK_DICTS:
        hooks, ours = old.__dict__.get(name), new.__dict__.get(name)
        if hooks is None:
            continue
        if ours:
            ours.update(hooks)
        else:
            new.__dict__[name] = hooks  # the same dict: the handles returned by register_*_hook still work
    new._is_full_backward_hook = old._is_full_backward_hook
    new.training = old.training
    record = old.__dict__.get("_deepfuse_patch")
    if patching:
        extra_keys = tuple(key for key in old.__dict__ if key not in new.__dict__)
    else:
        extra_keys = record.extra_keys if record is not None else ()
    for key in extra_keys:
        if key in old.__dict__:
            new.__dict__[key] = old.__dict__[key]
    if patching:
        new._deepfuse_patch = _Record(type(old), extra_keys)
    theirs = dict((*old.named_parameters(), *old.named_buffers()))
    for name, tensor in (*new.named_parameters(), *new.named_buffers()):
        if tensor.is_meta and not (name in theirs and theirs[name].is_meta):
            raise RuntimeError(f"deepfuse.patch: internal error, {name} of {cls.__name__} was not taken over")
    return new


# ---------------------------------------------------------------------------------------------
# patch
# ---------------------------------------------------------------------------------------------


def _fusable_activation(module: nn.Module) -> tuple[str | None, str | None]:
    """(deepfuse's name, None) for an activation module deepfuse fuses (``activation_name``), (None, why not) for
    another activation, (None, None) for anything else."""
    name = activation_name(module)
    if name is not None:
        return name, None
    kind = type(module)
    if kind is nn.LeakyReLU:
        return None, f"negative_slope={module.negative_slope} (deepfuse's leaky_relu has {LEAKY_RELU_SLOPE})"
    if kind is nn.GELU:
        return None, f"approximate={module.approximate!r}"
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)):
        return None, f"{kind.__name__} is a subclass (its forward may differ)"
    if kind.__module__ == "torch.nn.modules.activation" and kind is not nn.MultiheadAttention:
        return None, f"{kind.__name__} is not one deepfuse fuses ({_FUSED_ACTIVATIONS})"
    return None, None


def _why_left_as_is(module: nn.Module, kind: type) -> str | None:
    cls = type(module)
    if cls in _REPLACEABLE:
        return None
    if parametrize.is_parametrized(module):
        return "parametrized (torch.nn.utils.parametrize): left as is"
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy and not initialised yet: run one forward pass before deepfuse.patch"
    if cls.forward is not kind.forward:
        return f"subclasses nn.{kind.__name__} with its own forward: left as is"
    return (
        f"subclasses nn.{kind.__name__}: patch replaces torch's own class only (the subclass's methods would be lost)"
    )


class _Patcher:
    def __init__(self, model: nn.Module, exclude: Iterable[str]) -> None:
        self.report = PatchReport("patch")
        self.uses = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
        self.memo: dict[int, tuple[nn.Module, str]] = {}
        names = {name for name, _ in model.named_modules(remove_duplicate=False)}
        if isinstance(exclude, str):
            exclude = [exclude]
        self.exclude = tuple(exclude)
        unknown = [name for name in self.exclude if name not in names]
        if unknown:
            raise ValueError(
                f"exclude names modules the model does not have: {unknown} (give qualified names as "
                "in model.named_modules(), e.g. 'encoder.layers.0')"
            )

    def excluded(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def skip(self, name: str, module: nn.Module, reason: str) -> None:
        self.report.skipped.append(PatchEntry(name, type(module).__name__, reason))

    def walk(self, parent: nn.Module, prefix: str) -> None:
        if isinstance(parent, torch.jit.ScriptModule):
            self.skip(prefix.rstrip("."), parent, "TorchScript module: left as is")
            return
        sequential = isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward
        names = list(parent._modules)
        consumed: set[str] = set()
        for index, name in enumerate(names):
            child = parent._modules[name]
            qualified = prefix + name
            if child is None or name in consumed:
                continue
            if self.excluded(qualified):
                self.skip(qualified, child, "excluded (exclude=...)")
                continue
            if id(child) in self.memo:  # one module at several places: one replacement, kept shared
                parent._modules[name], first = self.memo[id(child)]
                self.report.replaced.append(
                    PatchEntry(qualified, type(child).__name__, f"-> the same module as {first}")
                )
                continue
            if isinstance(child, torch.jit.ScriptModule):
                self.skip(qualified, child, "TorchScript module: left as is")
                continue
            if _is_deepfuse(child):
                if not isinstance(child, (ConsumedActivation, ConsumedBatchNorm2d)):
                    self.skip(qualified, child, "already a deepfuse module")
                continue
            kind = _kind(child)
            reason = None if kind is None else _why_left_as_is(child, kind)
            if kind is None or reason is not None:
                if reason is not None:
                    self.skip(qualified, child, reason)
                self.walk(child, qualified + ".")
                continue
            plan = self.plan_fusion(parent, names, index, prefix, kind) if sequential else _Fusion()
            target = FusedConvBN2d if plan.bn is not None else _DEEPFUSE_CLASS[kind]
            try:
                new = _convert(child, target, plan.activation if kind in (nn.Linear, nn.Conv2d) else None, True)
            except _Unsupported as error:
                self.skip(qualified, child, str(error))
                self.walk(child, qualified + ".")  # e.g. an encoder layer left as is: its attention still patched
                continue
            parent._modules[name] = new
            self.memo[id(child)] = (new, qualified)
            self.report.skipped.extend(plan.not_fused)
            before = [type(child).__name__]
            if plan.bn is not None:
                key, bn = plan.bn
                new.bind_batch_norm(parent, key, qualified)
                consumed.add(key)
                before.append(f"BatchNorm2d ({prefix}{key})")
            if plan.act is not None:
                key, act = plan.act
                parent._modules[key] = ConsumedActivation(act, qualified)
                consumed.add(key)
                before.append(f"{type(act).__name__} ({prefix}{key})")
            after = _class_name(type(new)) + (f"(activation={new.activation!r})" if plan.activation else "")
            self.report.replaced.append(PatchEntry(qualified, " + ".join(before), f"-> {after}"))

    def plan_fusion(self, parent: nn.Module, names: list[str], index: int, prefix: str, kind: type) -> _Fusion:
        """What after parent[index] (a Linear or Conv2d in a plain nn.Sequential) is fused into it."""
        plan = _Fusion()
        if kind not in (nn.Linear, nn.Conv2d):
            return plan
        producer = parent._modules[names[index]]
        producer_name = prefix + names[index]
        position = index + 1

        def consumer_problem(module: nn.Module, name: str) -> str | None:
            if self.uses[id(producer)] > 1:
                return f"{producer_name} is used at several places in the model"
            if _has_run_hooks(producer):
                return f"{producer_name} has forward/backward hooks (they would see the fused output)"
            if self.uses[id(module)] > 1:
                return "it is used at several places in the model"
            if _has_run_hooks(module):
                return "it has hooks (it would no longer run)"
            if self.excluded(name):
                return "excluded (exclude=...)"
            return None

        if kind is nn.Conv2d and position < len(names):
            name = names[position]
            bn = parent._modules[name]
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                problem = consumer_problem(bn, prefix + name)
                if problem is None and type(bn) is not nn.BatchNorm2d:
                    problem = f"{type(bn).__name__} is not nn.BatchNorm2d"
                if problem is None and bn.num_features != producer.out_channels:
                    problem = f"{bn.num_features} features but {producer_name} has {producer.out_channels} channels"
                if problem is not None:
                    plan.not_fused.append(
                        PatchEntry(prefix + name, type(bn).__name__, f"not fused into {producer_name}: {problem}")
                    )
                    return plan
                plan.bn = (name, bn)
                position += 1
        if position < len(names) and parent._modules[names[position]] is not None:
            name = names[position]
            act = parent._modules[name]
            activation, unsupported = _fusable_activation(act)
            problem = unsupported if activation is None else consumer_problem(act, prefix + name)
            if activation is not None and problem is None:
                plan.act, plan.activation = (name, act), activation
            elif problem is not None:
                plan.not_fused.append(
                    PatchEntry(prefix + name, type(act).__name__, f"not fused into {producer_name}: {problem}")
                )
        return plan


@dataclass
class _Fusion:
    bn: tuple[str, nn.BatchNorm2d] | None = None
    act: tuple[str, nn.Module] | None = None
    activation: str | None = None
    not_fused: list[PatchEntry] = field(default_factory=list)


def _check_model(model, function: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"deepfuse.{function}: model must be a torch.nn.Module, got {type(model).__name__}")


def patch(model: nn.Module, *, exclude: Iterable[str] = ()) -> PatchReport:
    """Swap deepfuse's fused layers into ``model`` in place (see the module docstring) and return the report.

    ``exclude``: qualified module names (as in ``model.named_modules()``) whose subtrees are left as they are.
    Patching twice changes nothing the second time. Use the model as before: same forward, same state_dict,
    same Parameter objects.
    """
    _check_model(model, "patch")
    patcher = _Patcher(model, exclude)
    if _is_deepfuse(model):
        patcher.skip("", model, "already a deepfuse module")
    else:
        if type(model) in _REPLACEABLE:
            patcher.skip(
                "",
                model,
                "the model itself is this layer: patch replaces submodules in place (for a "
                "lone layer use deepfuse.nn's classes, e.g. FusedLinear.from_torch)",
            )
        patcher.walk(model, "")
    report = patcher.report
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.TransformerEncoder)
            and getattr(module, "use_nested_tensor", False)
            and any(isinstance(layer, dfnn.TransformerEncoderLayer) for layer in module.layers)
        ):
            module.use_nested_tensor = False
            module._deepfuse_use_nested_tensor = True
            report.notes.append(
                PatchEntry(
                    name,
                    type(module).__name__,
                    "use_nested_tensor set to False (the nested-tensor fast path cannot run deepfuse's layers)",
                )
            )
    return report


# ---------------------------------------------------------------------------------------------
# unpatch
# ---------------------------------------------------------------------------------------------


def _unpatch_walk(parent: nn.Module, prefix: str, report: PatchReport, memo: dict[int, nn.Module]) -> None:
    for name, child in list(parent._modules.items()):
        qualified = prefix + name
        if child is None:
            continue
        if id(child) in memo:
            parent._modules[name] = memo[id(child)]
            continue
        if isinstance(child, ConsumedActivation):
            parent._modules[name] = child.original
            report.replaced.append(
                PatchEntry(qualified, type(child).__name__, f"-> {_class_name(type(child.original))}")
            )
            continue
        if type(child) is ConsumedBatchNorm2d:
            ConsumedBatchNorm2d.release(child)
            report.replaced.append(PatchEntry(qualified, "ConsumedBatchNorm2d", "-> torch.nn.BatchNorm2d"))
            continue
        record = child.__dict__.get("_deepfuse_patch")
        if record is not None:
            try:
                new = _convert(child, record.original_type, None, False)
            except _Unsupported as error:
                report.skipped.append(PatchEntry(qualified, type(child).__name__, str(error)))
                continue
            parent._modules[name] = memo[id(child)] = new
            report.replaced.append(
                PatchEntry(qualified, type(child).__name__, f"-> {_class_name(record.original_type)}")
            )
            continue
        if _is_deepfuse(child):
            report.skipped.append(
                PatchEntry(qualified, type(child).__name__, "not put in by deepfuse.patch: left as is")
            )
            continue
        _unpatch_walk(child, qualified + ".", report, memo)


def unpatch(model: nn.Module) -> PatchReport:
    """Undo ``patch``: torch's modules back in place (the same Parameter objects, buffers, hooks and state_dict),
    fused activations and BatchNorms back in their slots. Modules built from deepfuse.nn directly (not by
    ``patch``) are left as they are. Unpatching twice changes nothing the second time."""
    _check_model(model, "unpatch")
    report = PatchReport("unpatch")
    if "_deepfuse_patch" in model.__dict__:
        report.skipped.append(
            PatchEntry("", type(model).__name__, "the model itself: call unpatch on the model that holds this module")
        )
    _unpatch_walk(model, "", report, {})
    for name, module in model.named_modules():
        if module.__dict__.pop("_deepfuse_use_nested_tensor", False):
            module.use_nested_tensor = True
            report.notes.append(PatchEntry(name, type(module).__name__, "use_nested_tensor set back to True"))
    return report
