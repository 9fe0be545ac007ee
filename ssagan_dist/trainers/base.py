"""The contract between the model zoo and the one training loop.

A trainer owns the networks of one GAN family, their optimizers and their objective, and
exposes the update phases as data (StyleGAN2-ADA style): the loop in ``train.py`` calls
``run_step`` and never looks inside. Trainers are distribution-agnostic: ``wrap`` lets the
caller put the trained networks under DDP (``ray.train.torch.prepare_model``), and a phase
then calls the wrapped module for the network it updates and the plain module, frozen, for
the others, so one backward never syncs gradients of a network that is not being stepped.

Batches are dicts: ``"video"`` (N, C, T, H, W) float in [-1, 1], frame 0 being the input
photo for image-conditioned models; ``"label"`` (N,) int64 when the data has classes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Mapping, Optional

import torch
from torch import nn

from ssagan_dist.config import EMAConfig, InitConfig, LossConfig, OptimConfig
from ssagan_dist.trainers.ema import GeneratorEMA

Batch = dict[str, torch.Tensor]
# Detached 0-dim tensors: reading them (float()) waits for the device, so the loop does it only
# when it logs, once for all of them.
Stats = dict[str, torch.Tensor]
WEIGHTS = ("ema", "raw")  # which generator predicts: the moving average of G, or G as trained


@dataclass(frozen=True)
class Phase:
    """One update: ``repeats`` times, draw a batch, compute ``loss(batch)``, step ``network``."""

    name: str  # "D" or "G"
    network: str  # key in trainer.nets updated by this phase
    repeats: int
    loss: Callable[[Batch], tuple[torch.Tensor, Stats]]


@dataclass(frozen=True)
class Pretrained:
    """A network that a trainer starts from another run's trained generator (that run's moving
    average of G when it kept one) instead of fresh weights, then keeps frozen. Declaring it makes
    ``key`` required and read for this trainer's models, and the checkpoint it names is checked
    against the network before training (``ssagan_dist.experiment``)."""

    network: str  # the role in ``nets`` it is loaded into
    field: str  # the ``InitConfig`` field naming the trained run's checkpoint (or run folder: its latest)
    what: str  # for messages: "Stage-I" reads "a trained Stage-I generator"
    hint: str  # for messages: which checkpoint fits, when the tensors do not
    # Arguments the tensors cannot tell apart (a residual and a direct generator have the same
    # ones), which must equal the trained run's: the trained model's model.args name ->
    # (this model's model.args name, the trained model's default).
    same_args: Mapping[str, tuple[str, object]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The dotted config key, for messages and the check of keys read."""
        return f"init.{self.field}"


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under a DDP (or any ``.module``-holding) wrapper."""
    return getattr(module, "module", module)


class GANTrainer:
    """Base class. Subclasses implement ``d_loss``, ``g_loss`` and ``predict``, and name the
    loss weights they read in ``loss_fields`` (fields of ``LossConfig``).

    ``nets`` holds every network by role ("G", "D", and e.g. "G_stage1" for a frozen one);
    ``trained`` names those with an optimizer. Optimizers are Adam with the papers' defaults
    (lr 2e-4, betas (0.5, 0.9)) unless ``optim`` says otherwise. The default step is
    ``optim.n_critic`` D updates, then one G update.

    The trainer is handed its config sections as typed objects (``optim``, ``loss``, ``ema``,
    ``init``) and reads no config key by name. With ``ema.decay`` > 0 it also keeps ``g_ema``, a moving average of G updated after
    every G step (``trainers/ema.py``); its averaged copy of G is ``nets["G_ema"]``, frozen, so it
    is checkpointed, restored and compared across ranks like every network. ``predict`` uses
    ``nets["G"]``: inside ``with trainer.generator_weights("ema")`` that is the average.
    """

    trained: tuple[str, ...] = ("G", "D")
    # The fields of its sections this trainer reads. A key the user sets that neither the trainer
    # nor the training loop reads is refused by config validation (ssagan_dist.experiment).
    optim_fields: ClassVar[tuple[str, ...]] = ("lr_g", "lr_d", "beta1", "beta2", "n_critic")
    loss_fields: ClassVar[tuple[str, ...]] = ()
    # What this trainer requires besides its networks: trained generators to start some of them
    # from (their config keys are read, and required, only when the trainer declares them).
    pretrained: ClassVar[tuple[Pretrained, ...]] = ()

    @classmethod
    def fields_read(cls, nets: Mapping[str, nn.Module]) -> dict[str, tuple[str, ...]]:
        """The fields this trainer reads for these networks (built on the meta device, say), by
        section; the ``ema`` section is read by every trainer."""
        return {"optim": cls.optim_fields, "loss": cls.loss_fields, "init": tuple(p.field for p in cls.pretrained),
                "ema": GeneratorEMA.fields_read}

    def __init__(self, nets: dict[str, nn.Module], optim: OptimConfig, loss: LossConfig,
                 device: torch.device | str = "cpu", *, ema: Optional[EMAConfig] = None,
                 init: Optional[InitConfig] = None):
        self.device = torch.device(device)
        self.optim_cfg, self.loss_cfg, self.init_cfg = optim, loss, init or InitConfig()
        self.nets = {k: v.to(self.device) for k, v in nets.items()}
        ema = ema or EMAConfig()
        self.g_ema = GeneratorEMA(self.nets["G"], ema.decay, ema.rampup) if ema.decay > 0 else None
        if self.g_ema is not None:
            self.nets["G_ema"] = self.g_ema.module
        self.wrapped: dict[str, nn.Module] = dict(self.nets)  # DDP-wrapped after wrap()
        self.optimizers = {
            k: torch.optim.Adam(self.nets[k].parameters(), betas=(optim.beta1, optim.beta2)) for k in self.trained
        }
        self.set_learning_rates()
        # Speed switches, set by ssagan_dist.perf.apply; these defaults run float32 as built.
        self.autocast_dtype: torch.dtype | None = None
        self.input_memory_format = torch.preserve_format  # of 5-D batch tensors
        self.grad_scalers: dict[str, torch.amp.GradScaler] = {}  # fp16 only, by network
        for k, net in self.nets.items():
            if k not in self.trained:
                net.eval().requires_grad_(False)

    # -- what subclasses define -------------------------------------------------------------
    def d_loss(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def g_loss(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", self.optim_cfg.n_critic, self.d_loss), Phase("G", "G", 1, self.g_loss)]

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        """The generated clip (N, C, T, H, W) in [-1, 1] for a batch, networks in eval mode."""
        raise NotImplementedError

    # -- the shared machinery ---------------------------------------------------------------
    def wrap(self, wrap_fn: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap each trained network (e.g. in DDP); the plain modules stay in ``nets``."""
        for k in self.trained:
            self.wrapped[k] = wrap_fn(self.nets[k])

    def run_step(self, next_batch: Callable[[], Batch] | Iterator[Batch]) -> Stats:
        """One training step: every phase, each ``repeats`` times, one fresh batch per update."""
        draw = next_batch if callable(next_batch) else (lambda it=next_batch: next(it))
        stats: Stats = {}
        for phase in self.phases():
            for k in self.trained:
                self.nets[k].train()
                self.nets[k].requires_grad_(k == phase.network)
            opt = self.optimizers[phase.network]
            for _ in range(phase.repeats):
                batch = {k: self._to_device(v) for k, v in draw().items() if torch.is_tensor(v)}
                opt.zero_grad(set_to_none=True)
                with self._autocast():
                    loss, phase_stats = phase.loss(batch)
                scaler = self.grad_scalers.get(phase.network)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:  # fp16: its step reads found-inf on the host, one sync per update
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                if phase.network == "G" and self.g_ema is not None:
                    self.g_ema.update_parameters(self.nets["G"])
            stats.update(phase_stats)  # the last repeat's numbers
        for k in self.trained:
            self.nets[k].requires_grad_(True)
        return stats

    def _to_device(self, v: torch.Tensor) -> torch.Tensor:
        fmt = self.input_memory_format if v.dim() == 5 else torch.preserve_format
        return v.to(self.device, non_blocking=True, memory_format=fmt)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def state_dict(self) -> dict:
        return {
            "nets": {k: unwrap(v).state_dict() for k, v in self.nets.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            **({"grad_scalers": {k: s.state_dict() for k, s in self.grad_scalers.items()}} if self.grad_scalers else {}),
            **({"g_ema_updates": self.g_ema.updates} if self.g_ema is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Networks and optimizers; the learning rates are then the config's, not the saved ones
        (a resumed or PBT-exploited run continues with the rates it was started with). A state
        without G's moving average (saved with the EMA off, or before it existed) starts the
        average afresh from the loaded G; a saved average is dropped when the EMA is now off."""
        for k, sd in state["nets"].items():
            if k == "G_ema" and self.g_ema is None:
                continue
            self.nets[k].load_state_dict(sd)
        if self.g_ema is not None:
            saved = "G_ema" in state["nets"]
            if not saved:
                self.nets["G_ema"].load_state_dict(unwrap(self.nets["G"]).state_dict())
            self.g_ema.updates = state.get("g_ema_updates", 0) if saved else 0
        for k, sd in state.get("optimizers", {}).items():
            self.optimizers[k].load_state_dict(sd)
        for k, sd in state.get("grad_scalers", {}).items():
            if k in self.grad_scalers:
                self.grad_scalers[k].load_state_dict(sd)
        self.set_learning_rates()

    def pretrained_sources(self) -> dict[str, str]:
        """The checkpoint URI each ``pretrained`` network starts from (its ``init`` field), by role."""
        return {p.network: getattr(self.init_cfg, p.field) for p in self.pretrained}

    def load_pretrained(self, network: str, generator_state_dict: dict[str, torch.Tensor]) -> None:
        """Load a trained generator's weights into ``nets[network]`` (one of ``pretrained``), frozen."""
        spec = next(p for p in self.pretrained if p.network == network)
        net = self.nets[network]
        try:
            net.load_state_dict(generator_state_dict)
        except RuntimeError as e:
            raise ValueError(f"the {spec.what} checkpoint does not fit this model's {network}: {e}") from None
        net.eval().requires_grad_(False)

    def weights_for(self, which: Optional[str] = None) -> str:
        """The generator to predict with, "ema" or "raw": ``which`` checked, or (None) the average
        when this trainer keeps one."""
        if which is None:
            return "ema" if self.g_ema is not None else "raw"
        if which not in WEIGHTS:
            raise ValueError(f"weights {which!r}: one of {', '.join(WEIGHTS)}")
        if which == "ema" and self.g_ema is None:
            raise ValueError("weights 'ema': this model keeps no moving average of G (it was trained with "
                             "ema.decay = 0); use 'raw'")
        return which

    @contextlib.contextmanager
    def generator_weights(self, which: Optional[str] = None) -> Iterator[str]:
        """Within the block ``nets["G"]`` (what ``predict`` runs) is the moving average ("ema") or
        G as trained ("raw"); ``which`` = None: the average when kept. Yields the choice."""
        which = self.weights_for(which)
        if which == "raw":
            yield which
            return
        trained = self.nets["G"]
        self.nets["G"] = self.nets["G_ema"]
        try:
            yield which
        finally:
            self.nets["G"] = trained

    def set_learning_rates(self) -> None:
        lrs = {"G": self.optim_cfg.lr_g, "D": self.optim_cfg.lr_d}
        for k, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = lrs[k]

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{k.lower()}": opt.param_groups[0]["lr"] for k, opt in self.optimizers.items()}
