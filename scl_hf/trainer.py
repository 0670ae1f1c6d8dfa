"""SCLTrainer: a transformers Trainer that trains multi-label classifiers from single positive labels.

One forward pass per step gives the image logits and (through a hook) the per-class maps; `compute_loss` is
forward → `bank.read` → loss terms → `bank.write`, where `bank` is the run's `scl_hf.bank.SharedBank` (which
owns every multi-process rule: docs/bank.md). Loss terms are logged by name (`loss_base`, `loss_cl`,
`loss_scl`), as TRL's trainers do.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from .bank import BankHeader, BankRead, SharedBank
from .callbacks import _BankReliability, _EpochSync, _LossStateGrads
from .checks import check_bank_launch, check_one_process_per_gpu, off_grid_warning, terms_never_act_warning
from .config import SCLConfig
from .loss_state import LOSS_STATE_FILE, load_loss_state, make_loss_state, save_loss_state  # noqa: F401 (re-export)
from .losses import (
    BASE_LOSSES,
    LossContext,
    consistency_loss,
    crop_corrected_weights,
    expected_negatives_ignore,
    observed_one_hot,
    options_from_config,
    sharpen,
    spatial_consistency_loss,
)
from .metrics import make_compute_metrics
from .models import attach_class_maps, normalization_for
from .reliability_gate import GATE_FILE, ReliabilityGate  # noqa: F401 (GATE_FILE: re-export)
from .trainer_hub import HubMixin
from .transforms import EvalTransform, TrainTransform
from .views import EvalViews, TrainViews, stack_batch

logger = logging.get_logger(__name__)

FULL_LABELS_WARNING = "method='full' trains on the full labels: an upper bound, not single-positive learning"


def dataset_fingerprint(dataset) -> str:
    fingerprint = getattr(dataset, "_fingerprint", None)
    return f"{fingerprint or 'unknown'}:{len(dataset)}"


def resolve_model(model, model_init, seed: int):
    """The model itself, or `model_init()` built under `seed` (Trainer seeds only after a model exists)."""
    if (model is None) == (model_init is None):
        raise ValueError("SCLTrainer needs exactly one of model= and model_init=")
    if model is not None:
        return model
    from transformers import set_seed

    set_seed(seed)
    return model_init()


# end_training's pause after the last barrier: gloo's worker threads free their finished work meanwhile
GLOO_DRAIN_SECONDS = 0.5


class SCLTrainer(HubMixin, Trainer):
    """Trainer for single-positive multi-label learning with the (spatial) consistency losses.

    `train_dataset`: a `datasets.Dataset` with an image column and the observed labels of each row (one class
    id or name, or several: partial labels; scl_hf/labels.py). `eval_dataset`: image column plus `labels`, all
    positive classes (ids, names or a 0/1 vector). Labels are read and checked here, before any training.
    `model_init`: a function returning the model, called after seeding with `args.seed` (instead of `model`),
    so two runs start from the same weights. The trainer owns augmentation (it must know every crop box) and
    the bank under `args.bank_dir`.
    """

    def __init__(self, model=None, args: SCLConfig = None, train_dataset=None, eval_dataset=None, processing_class=None,
                 compute_metrics=None, callbacks=None, model_init=None, **kwargs):
        if not isinstance(args, SCLConfig):
            raise TypeError("SCLTrainer needs an SCLConfig (it extends TrainingArguments with the method's options)")
        model = resolve_model(model, model_init, args.seed)
        check_one_process_per_gpu(args.n_gpu)
        self.method = args.method_spec
        self.num_labels = model.config.num_labels
        id2label = {int(k): v for k, v in getattr(model.config, "id2label", {}).items()}
        self.class_names = [id2label.get(i, str(i)) for i in range(self.num_labels)]
        mean, std = normalization_for(model, processing_class)
        self.epoch_ref = torch.zeros(1, dtype=torch.long).share_memory_()
        self.train_transform = TrainTransform(
            args.image_size, mean, std, args.crop_scale, args.crop_ratio, args.flip_prob, seed=args.seed
        )
        self.eval_transform = EvalTransform(args.image_size, mean, std)
        self.raw_train_dataset = train_dataset
        if train_dataset is not None:
            full_labels_column = args.labels_column if self.method.needs_full_labels else None  # "full" only
            if full_labels_column is not None:
                warnings.warn(FULL_LABELS_WARNING, UserWarning, stacklevel=2)
            pseudo_column = args.pseudo_label_column if self.method.info.pseudo_labels else None  # vlpl/aevlp only
            train_dataset = TrainViews(train_dataset, self.train_transform, self.epoch_ref, args.image_column,
                                       args.label_column, full_labels_column, self.num_labels, self.class_names,
                                       args.label_format, pseudo_label_column=pseudo_column)
        eval_dataset = self._eval_views(eval_dataset, args)
        if compute_metrics is None:
            compute_metrics = make_compute_metrics(
                id2label or None, empty_class=args.empty_class_policy, per_class=args.log_per_class_ap
            )
        super().__init__(
            model=model, args=args, data_collator=stack_batch, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=[_EpochSync(self.epoch_ref), _LossStateGrads(self), _BankReliability(self), *(callbacks or [])],
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False  # our loss is a mean per batch: let Trainer scale it for accumulation
        self.map_hook = attach_class_maps(self.model) if self.method.needs_class_maps else None
        off_grid = off_grid_warning(self.map_hook.grid if self.map_hook is not None else None, args.image_size)
        if off_grid is not None:
            warnings.warn(off_grid, UserWarning, stacklevel=2)
        self.bank: SharedBank | None = None
        self._loss_terms: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.loss_options = options_from_config(args)
        self.loss_state = self._make_loss_state()
        self.reliability = ReliabilityGate(self.args, self.method, self.num_labels)

    # ------------------------------------------------------------------ per-image state of a base loss (loss_state.py)
    def _make_loss_state(self) -> torch.nn.Module | None:
        make_state = self.method.info.make_state
        if make_state is None or self.raw_train_dataset is None:
            return None
        labels = self.train_dataset.labels.dense()  # (N, C) observed positives, checked by TrainViews
        return make_loss_state(make_state, labels, self.num_labels, self.loss_options, self.args.device, self.accelerator)

    def create_optimizer(self, model=None):
        """The loss state's parameters train with the model, in their own group: lr × state.lr_multiplier."""
        optimizer = super().create_optimizer(model)
        params = list(self.loss_state.parameters()) if self.loss_state is not None else []
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if params and not any(id(p) in known for p in params):
            lr = self.args.learning_rate * getattr(self.loss_state, "lr_multiplier", 1.0)
            optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})
        return optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """As Trainer.evaluate; a plain `datasets.Dataset` (image + labels) is accepted and wrapped too."""
        if eval_dataset is not None and not isinstance(eval_dataset, (EvalViews, str)):
            eval_dataset = self._eval_views(eval_dataset, self.args)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def _eval_views(self, eval_dataset, args):
        if eval_dataset is None or isinstance(eval_dataset, EvalViews):
            return eval_dataset
        wrap = lambda ds: EvalViews(ds, self.eval_transform, self.num_labels, args.image_column,  # noqa: E731
                                    args.labels_column, self.class_names, args.labels_format, args.label_column)
        if isinstance(eval_dataset, dict):
            return {name: wrap(ds) for name, ds in eval_dataset.items()}
        return wrap(eval_dataset)

    # ------------------------------------------------------------------ bank lifecycle
    @property
    def bank_dir(self) -> Path:
        return Path(self.args.bank_dir or os.path.join(self.args.output_dir, "scl_bank"))

    def expected_bank_header(self) -> BankHeader:
        return BankHeader(
            num_rows=len(self.raw_train_dataset),
            num_classes=self.num_labels,
            size=self.args.bank_size,
            with_heatmaps=self.method.needs_heatmaps,
            dataset_fingerprint=dataset_fingerprint(self.raw_train_dataset),
            config_fingerprint=self.args.bank_fingerprint(self.num_labels),
            layout=self.args.bank_layout,
            top_k=self.args.bank_top_k,
        )

    def setup_bank(self, resume_from_checkpoint: str | None = None) -> SharedBank | None:
        """The run's SharedBank — fresh, or restored from the checkpoint being resumed (docs/bank.md)."""
        if not (self.method.needs_predictions or self.method.needs_heatmaps):
            return None
        check_bank_launch(self.accelerator, self.args, len(self.raw_train_dataset))
        saving = self.args.save_strategy != "no" and self.args.should_save
        self.bank = SharedBank.setup(
            self.accelerator, self.bank_dir, self.expected_bank_header(), self.args.momentum,
            self.args.heatmap_momentum, resume_from=resume_from_checkpoint,
            snapshot_dir=Path(self.args.output_dir) if saving else None,
            sync=self.args.bank_sync, steps_per_epoch=self.micro_batches_per_epoch(),
        )
        if self.map_hook is not None:  # cut and paste-back place the cells where this backbone centres them
            self.bank.cell_offset = self.map_hook.grid.offset_cells
        return self.bank

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if self.raw_train_dataset is None:
            raise ValueError("SCLTrainer.train() needs a train_dataset")
        if resume_from_checkpoint is True:  # resolved here too: the bank must come from the same checkpoint
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        self.warn_if_terms_never_act()
        self.setup_bank(resume_from_checkpoint or None)
        if self.loss_state is not None and resume_from_checkpoint:
            load_loss_state(self.loss_state, resume_from_checkpoint, self.args.method, self.args.device)
        if resume_from_checkpoint and self.reliability.enabled:
            self.reliability.restore(resume_from_checkpoint)
        result = super().train(resume_from_checkpoint or None, trial, ignore_keys_for_eval, **kwargs)
        if self.bank is not None:
            self.bank.close(self.state.epoch or 0.0, self.state.global_step)
        return result

    def micro_batches_per_epoch(self) -> int:
        """Batches each process draws per epoch (accelerate's even batches: the same on every process)."""
        per_batch = self.args.per_device_train_batch_size * max(self.args.world_size, 1)
        rows = len(self.raw_train_dataset)
        return max(rows // per_batch if self.args.dataloader_drop_last else math.ceil(rows / per_batch), 1)

    def planned_epochs(self) -> float:
        """Epochs this run will train: num_train_epochs, or max_steps over the steps of one epoch."""
        if self.args.max_steps and self.args.max_steps > 0:
            steps_per_epoch = max(self.micro_batches_per_epoch() // self.args.gradient_accumulation_steps, 1)
            return self.args.max_steps / steps_per_epoch
        return float(self.args.num_train_epochs)

    def warn_if_terms_never_act(self) -> None:
        """A run no longer than the warm-up trains the base loss alone: say so rather than log no loss_scl."""
        message = terms_never_act_warning(self.method, self.args, self.planned_epochs())
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=3)
            logger.warning(message)

    def end_training(self) -> None:
        """Wait for every process, let gloo's workers finish, then shut the process group down; call it last
        in a launched script (in a single process it only closes the trackers).

        Why the pause: a gloo worker that frees a finished collective's tensors while the interpreter finalizes
        is killed in a destructor (SIGABRT after all the work is written: pytorch/pytorch#190489; 4 of 54
        two-process launches here, 0 of 80 with it; docs/bank.md). Sleeping releases the GIL so they drain first.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.accelerator.wait_for_everyone()
            time.sleep(GLOO_DRAIN_SECONDS)
        self.accelerator.end_training()  # also closes the trackers (report_to)

    def _save_checkpoint(self, model, trial):
        """The bank goes into checkpoint-N/scl_bank, so rotation keeps or deletes it with its checkpoint."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.bank is not None:
            self.bank.save(folder, self.state.epoch or 0.0, self.state.global_step, self.args.should_save)
        if self.reliability.enabled and self.args.should_save:
            self.reliability.save(folder)
        if self.loss_state is not None and self.args.should_save:
            save_loss_state(self.loss_state, folder)
        return super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------------ reliability of the bank (reliability_gate.py)
    @property
    def class_auc(self) -> torch.Tensor | None:
        """(C,) per-class reliability of the bank, set at epoch ends; None before the first."""
        return self.reliability.class_auc

    @class_auc.setter
    def class_auc(self, value: torch.Tensor | None) -> None:
        self.reliability.class_auc = value

    def class_gate(self, device: torch.device, spatial: bool = False) -> torch.Tensor:
        return self.reliability.gate(device, spatial)

    # ------------------------------------------------------------------ loss
    def consistency_active(self) -> bool:
        return (self.state.epoch or 0.0) >= self.args.warmup_epochs - 1e-6

    def bank_recording(self) -> bool:
        """The bank records from the last warm-up epoch on: observations of a barely trained network would
        otherwise stay in the running averages (first observation sets them) and become the targets."""
        return (self.state.epoch or 0.0) >= self.args.warmup_epochs - 1.0 - 1e-6

    def consistency_ramp(self) -> float:
        """0 → 1 over `consistency_rampup_epochs` after the warm-up (1 at once when that is 0)."""
        if self.args.consistency_rampup_epochs <= 0:
            return 1.0
        progress = ((self.state.epoch or 0.0) - self.args.warmup_epochs) / self.args.consistency_rampup_epochs
        return min(max(progress, 0.0), 1.0)

    def _prepare_inputs(self, inputs: dict) -> dict:
        """As Trainer's, keeping the row indices on the host too: the bank reads its rows by them, and copying
        them back from an accelerator would wait for the queued forward pass (a host sync)."""
        host_index = inputs.get("index")
        inputs = super()._prepare_inputs(inputs)
        if isinstance(host_index, torch.Tensor):
            inputs["index_host"] = host_index.cpu()
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """bank.prefetch → forward → bank.read → loss terms → bank.write."""
        if "index" not in inputs:
            raise ValueError("training batches must come from SCLTrainer's own dataloader (they carry the row index)")
        if self.bank is not None:  # read-ahead: the batch's rows load from the files while the forward runs
            self.bank.prefetch(inputs, spatial=self.method.needs_heatmaps and self.bank_recording(),
                               epoch=math.floor(self.state.epoch or 0.0))
        outputs = model(pixel_values=inputs["pixel_values"])
        logits = outputs.logits.float()
        class_maps = None
        if self.map_hook is not None:
            # the head runs per location outside model.forward, which accelerate wraps in autocast: under the
            # same autocast here, or bf16/fp16 features meet the fp32 head ("mat1 and mat2 must have the same dtype")
            with self.accelerator.autocast():
                class_maps = self.map_hook.pop_maps().float()
        epoch = math.floor(self.state.epoch or 0.0)
        read = None
        if self.bank is not None:
            spatial = self.method.needs_heatmaps and self.consistency_active()
            read = self.bank.read(inputs, epoch, tuple(class_maps.shape[-2:]) if spatial else None, logits.device)
        loss, terms = self.loss_terms(logits, class_maps, inputs, read)
        if self.bank is not None and self.bank_recording():
            self.bank.write(inputs, logits, class_maps if self.method.needs_heatmaps else None, read, epoch)
        for name, value in terms.items():
            self._loss_terms[name].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def loss_terms(self, logits: torch.Tensor, class_maps: torch.Tensor | None, inputs: dict,
                   read: BankRead | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the method's terms, and each term (logged by name).

        Under several processes each term is a weighted mean scaled by this process's share of the global
        batch's weights (`SharedBank.weight_share`), so DDP's gradient average is the mean one process would
        take over the global batch; rows already trained on in this epoch (accelerate's padding) weigh 0."""
        targets = inputs["targets"].float() if "targets" in inputs else observed_one_hot(inputs["label"], self.num_labels)
        negatives = inputs.get("negatives")  # (B, C) observed negatives, when the labels carry them
        active = self.consistency_active()
        context = LossContext(
            epoch=self.state.epoch or 0.0, num_classes=self.num_labels, indices=inputs["index"], state=self.loss_state,
            full_labels=inputs.get("full_labels"),  # present for method="full" only (TrainViews)
            observed_negatives=negatives,
            pseudo_labels=inputs.get("pseudo_labels"),  # CLIP scores, for 'vlpl'/'aevlp' only
            class_maps=class_maps,  # BoostLU scores the image from them
            options={**self.loss_options, "num_epochs": self.state.num_train_epochs or self.args.num_train_epochs},
        )
        ignore = None if read is None else ~read.fresh[:, None].expand_as(targets)  # padded rows: no loss
        if read is not None and "en" in self.method.terms and active:
            ignore = ignore | (expected_negatives_ignore(targets, read.running, self.args.expected_negative_threshold)
                               & (read.seen > 0)[:, None])
        cell_weights = None if read is None or read.weights is None else read.weights * read.fresh[:, None, None]
        gate = self.class_gate(logits.device) if self.reliability.enabled and active else None
        if cell_weights is not None and (self.args.crop_corrected_positive or self.args.crop_negative_threshold):
            positive_weights, crop_ignore = crop_corrected_weights(
                targets, read.targets, cell_weights, self.args.crop_negative_threshold or None  # 0: off
            )
            if self.args.crop_corrected_positive:
                context.element_weights = positive_weights
            if gate is not None:  # the mask trusts the stored heat only for classes whose bank is reliable
                crop_ignore = crop_ignore & (gate >= self.args.crop_negative_min_gate)[None, :]
            if self.method.info.crop_negative_mask:  # only hard-negative bases: for WAN/ROLE/EM the mask removes
                ignore = ignore | crop_ignore  # their own signal (wan+scl, role+scl, em-apl+scl fell; docs/method.md)
        if negatives is not None and ignore is not None:  # an observed negative is never masked out of the base
            ignore = ignore & ~(negatives.bool() & read.fresh[:, None])  # loss (padded rows stay out)
        terms = {"loss_base": BASE_LOSSES[self.method.base](logits, targets, context, ignore)}
        if read is not None:
            terms["loss_base"] = terms["loss_base"] * self.bank.weight_share(~ignore)
        loss = terms["loss_base"]
        if "cl" in self.method.terms and active:
            rows = (read.seen > 0) & read.fresh
            terms["loss_cl"] = consistency_loss(logits, targets, read.running, rows, negatives)
            terms["loss_cl"] = terms["loss_cl"] * self.bank.weight_share(rows[:, None] & (targets < 0.5))
            loss = loss + self.consistency_ramp() * self.args.consistency_weight * terms["loss_cl"]
        if cell_weights is not None:
            class_weights = None if gate is None else self.class_gate(logits.device, spatial=True)
            if not self.args.spatial_observed_classes:  # the labelled classes are left to the base loss
                unobserved = (targets < 0.5).to(class_maps.dtype)
                class_weights = unobserved if class_weights is None else class_weights[None, :] * unobserved
            terms["loss_scl"] = spatial_consistency_loss(
                class_maps, sharpen(read.targets, self.args.spatial_target_temperature), cell_weights,
                self.args.spatial_loss, class_weights=class_weights,
            ) * self.bank.weight_share(cell_weights)
            loss = loss + self.consistency_ramp() * self.args.spatial_weight * terms["loss_scl"]
        return loss, terms

    # ------------------------------------------------------------------ logging and evaluation
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._loss_terms and not any(key.startswith("eval_") for key in logs):
            for name, values in self._loss_terms.items():
                mean = torch.stack(values).mean()
                if self.accelerator.num_processes > 1:
                    mean = self.accelerator.reduce(mean.to(self.accelerator.device), reduction="mean")
                logs[name] = round(mean.item(), 6)
            self._loss_terms.clear()
            logs.update(self.reliability.log_values())  # how far the bank is trusted, once scored
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Whole-image logits (a base scoring from class maps, BoostLU, evaluates its own) and a multi-label BCE
        eval loss; class maps are never returned."""
        from_maps = self.method.info.logits_from_maps
        if self.map_hook is not None:
            self.map_hook.enabled = from_maps is not None
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                logits = model(pixel_values=inputs["pixel_values"]).logits.float()
                if from_maps is not None:
                    logits = from_maps(self.map_hook.pop_maps().float(), self.loss_options)
        finally:
            if self.map_hook is not None:
                self.map_hook.enabled = True
        labels = inputs.get("labels")
        loss = F.binary_cross_entropy_with_logits(logits, labels.float()) if labels is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, logits, labels
