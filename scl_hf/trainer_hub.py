"""SCLTrainer's Trainer hooks for saving, carding and pushing, routed to scl_hf.hub's release folders so that
neither a user's save nor an upload ever carries the bank, optimizer state or pickles."""

from __future__ import annotations

import os


class HubMixin:
    """For a transformers Trainer subclass (SCLTrainer): overrides Trainer's own save/card/push hooks."""

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

