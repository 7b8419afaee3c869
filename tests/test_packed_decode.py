"""grpo/rollout/packed.py: decoding from a oneDNN-prepacked copy gives the policy's own distribution."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo.rollout import packed
from grpo.rollout.base import Backend

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a oneDNN build of torch")


def small_llama(tie: bool = True) -> LlamaForCausalLM:
    # 512 x 512 projections and up: above MIN_PACKED_ENTRIES, as in a real model.
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=1000, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_packed_copy_gives_the_same_logits_and_follows_weight_updates(tie):
    model = small_llama(tie)
    twin = packed.packed_copy(model)
    n_packed = sum(isinstance(m, packed.PackedLinear) for m in twin.modules())
    assert n_packed == 2 * 5 + 1  # q, o, gate, up, down per layer and the lm_head; k, v (512 x 256) stay plain
    ids = torch.randint(0, 1000, (3, 11))
    with torch.no_grad():
        assert torch.allclose(twin(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
        for p in model.parameters():  # an "optimizer step" on the policy
            p.add_(torch.randn_like(p) * 0.02)
        stale = twin(ids).logits
        packed.refresh(twin, model)
        fresh, expect = twin(ids).logits, model(ids).logits
    assert not torch.allclose(stale, expect, atol=1e-3)  # the update mattered...
    assert torch.allclose(fresh, expect, atol=1e-4, rtol=1e-4)  # ...and the refreshed copy has it
    assert all(not p.requires_grad for p in twin.parameters())


def test_backend_decodes_from_the_packed_copy_only_where_it_applies():
    model = small_llama()
    tok = type("Tok", (), {"eos_token_id": 2})()
    on = Backend(tok, 8, cpu_prepacked_decode=True)
    off = Backend(tok, 8, cpu_prepacked_decode=False)
    twin = on.decode_model(model)
    assert twin is not model and any(isinstance(m, packed.PackedLinear) for m in twin.modules())
    assert on.decode_model(model) is twin  # made once
    on.sync_weights(model)  # after an optimizer step: refreshed in place, not rebuilt
    assert on.decode_model(model) is twin
    assert off.decode_model(model) is model
    assert not packed.prepacking_available(model.to(torch.bfloat16))  # float32 only
    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, vocab_size=40))
    assert not packed.prepacking_available(tiny)  # dispatch-bound: packing would not pay


def test_sampled_tokens_log_probs_match_the_policy_through_the_packed_copy():
    # The compact sampler's log-probs come from the packed copy; the update scores with the policy: they
    # must agree to float rounding, or the importance ratio of every token would be off.
    from grpo.rollout.compact import CompactSampler

    model = small_llama()
    tok = type("Tok", (), {"eos_token_id": 2, "pad_token_id": 0})()
    sampler = CompactSampler(tok, 12, cpu_prepacked_decode=True)
    prompt = torch.randint(3, 1000, (4, 6))
    mask = torch.ones_like(prompt)
    torch.manual_seed(1)
    ids, logp = sampler.decode(sampler.decode_model(model), prompt, mask, 1, False, 12)
    with torch.no_grad():
        full = model(torch.cat([prompt, ids], 1)).logits[:, 5:-1].log_softmax(-1)
    expect = full.gather(-1, ids[..., None]).squeeze(-1)
    assert (logp - expect).abs().max().item() < 1e-4
