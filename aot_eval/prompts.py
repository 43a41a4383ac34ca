"""Prompt identity with the stock lmms-eval models.

lmms-eval tasks pick prompt variants by the ``--model`` name: ``TaskManager(model_name=...)``
passes it to every task, and ``ConfigurableTask._prepare_model_specific_config`` uses
``lmms_eval_specific_kwargs[model_name]`` when present, otherwise ``default`` (videomme, for
example, gives ``llava_vid`` the post-prompt "The best answer is:").

Our models run under their own ids (``llava_onevision_aot``, ``llava_vid_aot``), so the stock ids
are never taken over. For the prompts, the AOT launcher (``python -m aot_eval``) and
:func:`task_manager` build the tasks with :class:`PromptAliasTaskManager`, which looks prompts up
under the stock id of *our* ids only (:func:`prompt_ids`); every other id is passed through
unchanged. A model built with ``prompt_as=stock`` (the default) checks that the alias was active in
its process and refuses to run otherwise (see :func:`require_stock_prompts`), so a plain
``python -m lmms_eval --model llava_vid_aot`` cannot silently use the other prompt variants;
``prompt_as=own`` opts into the tasks' prompts for our own id (lmms-eval's normal behaviour).
"""

from __future__ import annotations

def prompt_ids() -> dict:
    """Our model id -> the stock id whose prompt variants the tasks must use (one per eval
    protocol of :mod:`aot.backbones`)."""
    from aot.backbones import eval_protocols

    return {protocol.model_id: protocol.stock_model for protocol in eval_protocols()}


_ACTIVE: dict = {"model_name": None, "prompt_name": None}


def prompt_name_for(model_name):
    """The name tasks should look prompts up under: the stock id for our ids, else unchanged."""
    return prompt_ids().get(model_name, model_name)


def alias_active_for(model_id: str) -> bool:
    """True when a :class:`PromptAliasTaskManager` of this process built tasks for ``model_id``."""
    return (_ACTIVE["model_name"] == model_id
            and _ACTIVE["prompt_name"] == prompt_ids().get(model_id))


def require_stock_prompts(model_id: str) -> None:
    """Raise unless this process resolves task prompts for ``model_id`` under its stock id."""
    if alias_active_for(model_id):
        return
    stock = prompt_ids()[model_id]
    raise RuntimeError(
        f"{model_id}: the tasks were not built with the prompts of the stock '{stock}' model "
        f"(lmms-eval keys prompt variants by --model name). Launch with "
        f"'python -m aot_eval --model {model_id} ...' (same flags as lmms-eval) or pass "
        f"task_manager=aot_eval.prompts.task_manager(...) to simple_evaluate; or add "
        f"prompt_as=own to --model_args to accept the prompts tasks give '{model_id}'.")


def _mark_active(model_name, prompt_name) -> None:
    _ACTIVE["model_name"] = model_name
    _ACTIVE["prompt_name"] = prompt_name


def alias_task_manager_class():
    """lmms-eval's ``TaskManager`` subclass that resolves prompts under :func:`prompt_name_for`."""
    from lmms_eval.tasks import TaskManager

    class PromptAliasTaskManager(TaskManager):
        """A TaskManager whose tasks see the stock id as model name for our model ids."""

        def __init__(self, *args, model_name=None, **kwargs):
            prompt_name = prompt_name_for(model_name)
            super().__init__(*args, model_name=prompt_name, **kwargs)
            self.requested_model_name = model_name
            _mark_active(model_name, prompt_name)

    return PromptAliasTaskManager


def task_manager(verbosity: str = "INFO", include_path=None, model_name=None, **kwargs):
    """A :class:`PromptAliasTaskManager` for ``simple_evaluate(..., task_manager=...)``."""
    return alias_task_manager_class()(verbosity, include_path=include_path, model_name=model_name,
                                      **kwargs)
