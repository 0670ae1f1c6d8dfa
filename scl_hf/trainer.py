"""SCLTrainer: a transformers Trainer that trains multi-label classifiers from single positive labels.

One forward pass per step gives the image logits and (through a hook) the per-class maps; `compute_loss`
adds the consistency terms to the base loss, reading each image's bank rows, then writes this step's
predictions and maps back into the bank (gathered across processes, de-duplicated, written by the local
main process). Loss terms are logged by name (`loss_base`, `loss_cl`, `loss_scl`), as TRL's trainers do.
"""

from __future__ import annotations

import math
import os
import time
import uuid
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .bank import BankHeader, SCLBank, check_free_space, first_occurrence, open_bank
from .bank_snapshot import Snapshot, restore_snapshot, save_snapshot
from .config import SCLConfig
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
from .transforms import EvalTransform, TrainTransform
from .views import EvalViews, TrainViews, check_label_range, stack_batch


class _EpochSync(TrainerCallback):
    """Publishes the epoch to dataloader workers before each epoch's iterator is created."""

    def __init__(self, epoch_ref: torch.Tensor):
        self.epoch_ref = epoch_ref

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is e + j/steps_in_epoch with j < steps_in_epoch mid-epoch (a resume) and exactly e at a
        # boundary, so floor is exact; a "+ 1e-6" would round e + (n-1)/n up for epochs of over 10^6 steps
        self.epoch_ref.fill_(math.floor(state.epoch or 0.0))


class _LossStateGrads(TrainerCallback):
    """Trainer zeroes only the model's gradients after a step: a loss state's parameters (ROLE) need it too."""

    def __init__(self, trainer: SCLTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.loss_state is not None:
            self.trainer.loss_state.zero_grad(set_to_none=True)


LOSS_STATE_FILE = "scl_loss_state.safetensors"
FULL_LABELS_WARNING = "method='full' trains on the full labels: an upper bound, not single-positive learning"


def dataset_fingerprint(dataset) -> str:
    fingerprint = getattr(dataset, "_fingerprint", None)
    return f"{fingerprint or 'unknown'}:{len(dataset)}"


# end_training's pause after the last barrier: gloo's worker threads free their finished work meanwhile
GLOO_DRAIN_SECONDS = 0.5


class SCLTrainer(Trainer):
    """Trainer for single-positive multi-label learning with the (spatial) consistency losses.

    `train_dataset`: a `datasets.Dataset` with an image column and one int label per row.
    `eval_dataset`: image column plus `labels`, the list of all positive class ids.
    The trainer owns augmentation (it must know every crop box) and the bank under `args.bank_dir`.
    """

    def __init__(self, model, args: SCLConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 compute_metrics=None, callbacks=None, **kwargs):
        if not isinstance(args, SCLConfig):
            raise TypeError("SCLTrainer needs an SCLConfig (it extends TrainingArguments with the method's options)")
        self.method = args.method_spec
        self.num_labels = model.config.num_labels
        id2label = {int(k): v for k, v in getattr(model.config, "id2label", {}).items()}
        mean, std = normalization_for(model, processing_class)
        self.epoch_ref = torch.zeros(1, dtype=torch.long).share_memory_()
        self.train_transform = TrainTransform(
            args.image_size, mean, std, args.crop_scale, args.crop_ratio, args.flip_prob, seed=args.seed
        )
        self.eval_transform = EvalTransform(args.image_size, mean, std)
        self.raw_train_dataset = train_dataset
        if train_dataset is not None:
            check_label_range(train_dataset[args.label_column] if args.label_column in train_dataset.column_names
                              else [], self.num_labels, args.label_column, "training")
            full_labels_column = args.labels_column if self.method.needs_full_labels else None  # "full" only
            if full_labels_column is not None:
                warnings.warn(FULL_LABELS_WARNING, UserWarning, stacklevel=2)
            pseudo_column = args.pseudo_label_column if self.method.info.pseudo_labels else None  # vlpl/aevlp only
            train_dataset = TrainViews(train_dataset, self.train_transform, self.epoch_ref, args.image_column,
                                       args.label_column, full_labels_column, self.num_labels, pseudo_column)
        eval_dataset = self._eval_views(eval_dataset, args)
        if compute_metrics is None:
            compute_metrics = make_compute_metrics(
                id2label or None, empty_class=args.empty_class_policy, per_class=args.log_per_class_ap
            )
        super().__init__(
            model=model, args=args, data_collator=stack_batch, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=[_EpochSync(self.epoch_ref), _LossStateGrads(self), *(callbacks or [])], **kwargs,
        )
        self.model_accepts_loss_kwargs = False  # our loss is a mean per batch: let Trainer scale it for accumulation
        self.map_hook = attach_class_maps(self.model) if self.method.needs_class_maps else None
        self.bank: SCLBank | None = None
        self._bank_snapshot: Snapshot | None = None
        self._loss_terms: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.loss_options = options_from_config(args)
        self.loss_state = self._make_loss_state()

    # ------------------------------------------------------------------ per-image state of a base loss (baselines.py)
    def _make_loss_state(self) -> torch.nn.Module | None:
        """ROLE's estimates, LL-Cp's corrections, EM-APL's pseudo-negatives: N rows, kept out of the model."""
        make_state = self.method.info.make_state
        if make_state is None or self.raw_train_dataset is None:
            return None
        labels = torch.as_tensor(self.raw_train_dataset[self.args.label_column], dtype=torch.long)
        state = make_state(labels, self.num_labels, self.loss_options).to(self.args.device)
        if self.accelerator.num_processes > 1:  # identical copies on every process, as the bank
            state.gather = self.accelerator.gather
            for parameter in state.parameters():
                parameter.register_hook(lambda grad: self.accelerator.reduce(grad, reduction="mean"))
        return state

    def create_optimizer(self, model=None):
        """The loss state's parameters train with the model, in their own group: lr × state.lr_multiplier."""
        optimizer = super().create_optimizer(model)
        params = list(self.loss_state.parameters()) if self.loss_state is not None else []
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if params and not any(id(p) in known for p in params):
            lr = self.args.learning_rate * getattr(self.loss_state, "lr_multiplier", 1.0)
            optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})
        return optimizer

    def _restore_loss_state(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        path = os.path.join(checkpoint, LOSS_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint} has no {LOSS_STATE_FILE}: method {self.args.method!r} keeps "
                                    "per-image state that a resumed run needs; resume from a checkpoint of this method")
        saved = load_file(path, device=str(self.args.device))
        mismatched = {k: tuple(v.shape) for k, v in saved.items() if v.shape != self.loss_state.state_dict()[k].shape}
        if mismatched:
            raise ValueError(f"{path} holds state of another training set: shapes {mismatched}")
        self.loss_state.load_state_dict(saved)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """As Trainer.evaluate; a plain `datasets.Dataset` (image + labels) is accepted and wrapped too."""
        if eval_dataset is not None and not isinstance(eval_dataset, (EvalViews, str)):
            eval_dataset = self._eval_views(eval_dataset, self.args)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def _eval_views(self, eval_dataset, args):
        if eval_dataset is None or isinstance(eval_dataset, EvalViews):
            return eval_dataset
        wrap = lambda ds: EvalViews(ds, self.eval_transform, self.num_labels, args.image_column, args.labels_column)  # noqa: E731
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

    def setup_bank(self, resume_from_checkpoint: str | None = None) -> SCLBank | None:
        """The local main process of every node makes its own copy of the bank — fresh, or restored from the
        checkpoint being resumed — and the node's other processes open it read-only (docs/bank.md)."""
        if not (self.method.needs_predictions or self.method.needs_heatmaps):
            return None
        header = self.expected_bank_header()
        self._check_bank_is_node_local()
        if self.accelerator.is_local_main_process:
            saving = self.args.save_strategy != "no" and self.args.should_save
            check_free_space(self.bank_dir, header, Path(self.args.output_dir) if saving else None)
            if resume_from_checkpoint is not None:
                self.bank, self._bank_snapshot = restore_snapshot(resume_from_checkpoint, self.bank_dir, header)
            else:  # a run from step 0 starts its bank over; a dirty bank (crashed run) is refused instead
                self.bank = open_bank(self.bank_dir, header, writable=True, create=True, reset=True)
                self._bank_snapshot = None
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_local_main_process:
            self.bank = open_bank(self.bank_dir, header, writable=False, create=False)
        return self.bank

    def _check_bank_is_node_local(self) -> None:
        """Each node's local main writes its own copy: two nodes sharing one bank_dir would interleave writes."""
        acc = self.accelerator
        if acc.num_processes > 1:
            token = broadcast_object_list([uuid.uuid4().hex if acc.is_main_process else None])[0]
            marker = self.bank_dir / f".writer-{token}-{acc.process_index}"
            if acc.is_local_main_process:
                self.bank_dir.mkdir(parents=True, exist_ok=True)
                marker.touch()
            acc.wait_for_everyone()
            writers = len(list(self.bank_dir.glob(f".writer-{token}-*"))) if acc.is_local_main_process else 0
            shared = acc.reduce(torch.tensor([int(writers > 1)], device=acc.device), reduction="sum").item()
            marker.unlink(missing_ok=True)
            if shared:
                raise RuntimeError(
                    f"bank_dir {self.bank_dir} is shared by several nodes; each node must keep its own copy on "
                    "node-local disk (docs/bank.md): set SCLConfig.bank_dir to a local path such as /tmp/scl_bank."
                )

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if self.raw_train_dataset is None:
            raise ValueError("SCLTrainer.train() needs a train_dataset")
        if resume_from_checkpoint is True:  # resolved here too: the bank must come from the same checkpoint
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        self.setup_bank(resume_from_checkpoint or None)
        if self.loss_state is not None and resume_from_checkpoint:
            self._restore_loss_state(resume_from_checkpoint)
        result = super().train(resume_from_checkpoint or None, trial, ignore_keys_for_eval, **kwargs)
        if self.bank is not None and self.bank.writable:
            self.bank.mark(self.state.epoch or 0.0, self.state.global_step)
        return result

    def end_training(self) -> None:
        """Wait for every process, let gloo's workers finish, then shut the process group down; call it last
        in a launched script (in a single process it only closes the trackers).

        A gloo worker thread frees a finished collective's tensors just after the caller's wait returns, and
        freeing a tensor that Python already dropped takes the GIL. If the interpreter is finalizing by then,
        the thread is killed inside a destructor: "terminate called without an active exception", SIGABRT,
        after all the work is written, and the launcher reports the run as failed (pytorch/pytorch#190489;
        4 of 54 two-process launches here, 0 of 80 with the pause: docs/bank.md). `destroy_process_group`
        alone does not help: DDP keeps the group, and its threads, alive until exit. Sleeping releases the
        GIL so that the workers drain first.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.accelerator.wait_for_everyone()
            time.sleep(GLOO_DRAIN_SECONDS)
        self.accelerator.end_training()  # also closes the trackers (report_to)

    def _save_checkpoint(self, model, trial):
        """The bank goes into checkpoint-N/scl_bank, so rotation keeps or deletes it with its checkpoint."""
        if self.bank is not None and self.bank.writable:
            self.bank.mark(self.state.epoch or 0.0, self.state.global_step)
            if self.args.should_save:
                folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
                self._bank_snapshot = save_snapshot(self.bank, folder, self._bank_snapshot)
        if self.loss_state is not None and self.args.should_save:
            from safetensors.torch import save_file

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.loss_state.state_dict().items()}
            save_file(tensors, os.path.join(folder, LOSS_STATE_FILE))
        return super()._save_checkpoint(model, trial)

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "index" not in inputs:
            raise ValueError("training batches must come from SCLTrainer's own dataloader (they carry the row index)")
        outputs = model(pixel_values=inputs["pixel_values"])
        logits = outputs.logits.float()
        targets = observed_one_hot(inputs["label"], self.num_labels)
        indices = inputs["index"]
        context = LossContext(
            epoch=self.state.epoch or 0.0, num_classes=self.num_labels, indices=indices, state=self.loss_state,
            full_labels=inputs.get("full_labels"),  # present for method="full" only (TrainViews)
            pseudo_labels=inputs.get("pseudo_labels"),  # CLIP scores, for 'vlpl'/'aevlp' only
            options={**self.loss_options, "num_epochs": self.state.num_train_epochs or self.args.num_train_epochs},
        )
        active = self.consistency_active()
        terms: dict[str, torch.Tensor] = {}

        class_maps = map_targets = cell_weights = None
        if self.method.needs_class_maps:
            # the head runs per location outside model.forward, which accelerate wraps in autocast: under the
            # same autocast here, or bf16/fp16 features meet the fp32 head ("mat1 and mat2 must have the same dtype")
            with self.accelerator.autocast():
                class_maps = self.map_hook.pop_maps().float()
            context.class_maps = class_maps  # BoostLU scores the image from them
            if active and self.method.needs_heatmaps:
                map_targets, cell_weights = self.bank.read_spatial(  # built on the maps' device (sparse layout)
                    indices, inputs["boxes"], inputs["flips"], tuple(class_maps.shape[-2:]), device=class_maps.device
                )

        running = seen = None
        ignore = torch.zeros_like(targets, dtype=torch.bool)
        if self.method.needs_predictions:
            running, seen = (t.to(logits.device) for t in self.bank.read_predictions(indices))
            if "en" in self.method.terms and active:
                ignore |= expected_negatives_ignore(targets, running, self.args.expected_negative_threshold)
                ignore &= (seen > 0)[:, None]
        if map_targets is not None and (self.args.crop_corrected_positive or self.args.crop_negative_threshold):
            positive_weights, crop_ignore = crop_corrected_weights(
                targets, map_targets, cell_weights, self.args.crop_negative_threshold or None  # 0: off
            )
            if self.args.crop_corrected_positive:
                context.element_weights = positive_weights
            if self.method.info.crop_negative_mask:  # only hard-negative bases: for WAN/ROLE/EM the mask removes
                ignore |= crop_ignore  # their own signal (wan+scl, role+scl, em-apl+scl fell; docs/method.md)
        terms["loss_base"] = BASE_LOSSES[self.method.base](logits, targets, context, ignore if ignore.any() else None)
        if self.accelerator.num_processes > 1 and active and (self.method.needs_predictions or map_targets is not None):
            # masked entries differ per process: weight each process's mean by its share of the kept entries, so
            # DDP's average is the mean over the global batch (as one process would compute it)
            terms["loss_base"] = terms["loss_base"] * self._global_weight_share((~ignore).float())
        loss = terms["loss_base"]

        if "cl" in self.method.terms and active:
            observed_rows = seen > 0
            terms["loss_cl"] = consistency_loss(logits[observed_rows], targets[observed_rows], running[observed_rows])
            loss = loss + self.consistency_ramp() * self.args.consistency_weight * terms["loss_cl"]

        if map_targets is not None:
            terms["loss_scl"] = spatial_consistency_loss(
                class_maps, sharpen(map_targets, self.args.spatial_target_temperature), cell_weights,
                self.args.spatial_loss,
            )
            if self.accelerator.num_processes > 1:
                terms["loss_scl"] = terms["loss_scl"] * self._global_weight_share(cell_weights)
            loss = loss + self.consistency_ramp() * self.args.spatial_weight * terms["loss_scl"]

        if self.bank is not None and self.bank_recording():
            maps_to_store = class_maps if self.method.needs_heatmaps else None
            self.update_bank(indices, inputs["boxes"], inputs["flips"], logits, maps_to_store, inputs["label"])
        for name, value in terms.items():
            self._loss_terms[name].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def _global_weight_share(self, weights: torch.Tensor) -> torch.Tensor:
        """P·Σw_local / Σw_all: turns this process's weighted mean into its share of the weighted mean over the
        global batch, so that DDP's gradient average equals one process training on the whole batch."""
        local = weights.sum().detach()
        total = self.accelerator.reduce(local.clone(), reduction="sum")
        return local * self.accelerator.num_processes / total.clamp_min(1e-6)

    @torch.no_grad()
    def update_bank(self, indices, boxes, flips, logits, class_maps, labels=None) -> None:
        """Gather this step's rows from every process, keep each image once, write on the local main."""
        payload = {"indices": indices, "probs": torch.sigmoid(logits), "boxes": boxes, "flips": flips.to(torch.uint8)}
        if labels is not None:
            payload["labels"] = labels
        if class_maps is not None:
            payload["maps"] = torch.sigmoid(class_maps).half()
        if self.accelerator.num_processes > 1:
            payload = {k: self.accelerator.gather(v.contiguous()) for k, v in payload.items()}
        if self.accelerator.is_local_main_process:
            keep = first_occurrence(payload["indices"])
            rows = {k: v[keep] for k, v in payload.items()}
            self.bank.update(
                rows["indices"], rows["probs"], self.args.momentum,
                boxes=rows["boxes"], flips=rows["flips"].bool(),
                map_probs=rows.get("maps"), heatmap_momentum=self.args.heatmap_momentum, labels=rows.get("labels"),
            )
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # the next step's reads must see this step's writes

    # ------------------------------------------------------------------ logging and evaluation
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._loss_terms and not any(key.startswith("eval_") for key in logs):
            for name, values in self._loss_terms.items():
                mean = torch.stack(values).mean()
                if self.accelerator.num_processes > 1:
                    mean = self.accelerator.reduce(mean.to(self.accelerator.device), reduction="mean")
                logs[name] = round(mean.item(), 6)
            self._loss_terms.clear()
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

    # ------------------------------------------------------------------ release export and Hub (scl_hf.hub)
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep Trainer's format (plus a token-free training_args.json); a user's call writes the
        release folder of scl_hf.hub.export: safetensors, preprocessor config, model card, no pickles."""
        from . import hub

        if _internal_call:
            super().save_model(output_dir, _internal_call=True)
            if self.args.should_save:
                hub.write_training_args(self.args, output_dir or self.args.output_dir)
            return
        hub.save_trainer_model(self, output_dir or self.args.output_dir)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def create_model_card(self, **kwargs) -> None:
        """README.md in output_dir from the scl_hf card template (method, data, mAP, configuration, citation)."""
        from . import hub

        if self.is_world_process_zero():
            hub.trainer_model_card(self, **kwargs).save(os.path.join(self.args.output_dir, "README.md"))

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None,
                    revision=None, private=None, **kwargs):
        """Upload only the release files (never the bank, optimizer/rng state, checkpoints or pickles)."""
        from . import hub

        return hub.push_trainer(self, commit_message=commit_message, token=token, revision=revision,
                                private=private, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer would upload output_dir as it is (the bank included): push the release files instead."""
        if self.args.hub_strategy != "end":
            self.push_to_hub(commit_message=f"Training in progress, step {self.state.global_step}")

