"""Real Hugging Face `transformers` architectures, built from small configs with random init (no download),
for the calibration survey (benchmarks/calibrate.py --hf). Each name in ARCHS is a zero-argument factory
in this module (`benchmarks/hf_models.py:llama`); BATCHES holds batch callables for the models that need
more than token ids or pixels (encoder-decoders).

The configs are the library's own classes with small sizes: 2-4 layers, hidden 64, vocabulary 1000 (so
the default loss is a 1000-class cross-entropy over the logits; at initialisation it should start near
ln 1000 = 6.9). Everything else (init ranges, norms, activations) is the library's default.
"""
from __future__ import annotations

import torch

V = 1000
H = 64
# Keyword sets most configs accept.
_DEC = dict(vocab_size=V, hidden_size=H, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=128)
_KV = dict(num_key_value_heads=2)
_ENC = dict(vocab_size=V, hidden_size=H, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=128, num_labels=3)
_IMG = dict(num_labels=10)

# name: (model class, config class, config kwargs, input shape; None = token ids 8x32)
ARCHS: dict[str, tuple[str, str, dict, tuple | None]] = {
    # --- decoder-only language models ---------------------------------------------------------------------
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=V, n_embd=H, n_layer=3, n_head=4, n_positions=128), None),
    "gpt_neo": ("GPTNeoForCausalLM", "GPTNeoConfig", dict(vocab_size=V, hidden_size=H, num_layers=2, num_heads=4,
                                                          attention_types=[[["global", "local"], 1]],
                                                          max_position_embeddings=128), None),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", _DEC, None),
    "gptj": ("GPTJForCausalLM", "GPTJConfig", dict(vocab_size=V, n_embd=H, n_layer=3, n_head=4, rotary_dim=8,
                                                   n_positions=128), None),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(vocab_size=V, hidden_size=H, num_hidden_layers=3, ffn_dim=128,
                                                num_attention_heads=4, word_embed_proj_dim=H,
                                                max_position_embeddings=128), None),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(vocab_size=V, hidden_size=H, n_layer=3, n_head=4), None),
    "llama": ("LlamaForCausalLM", "LlamaConfig", {**_DEC, **_KV}, None),
    "mistral": ("MistralForCausalLM", "MistralConfig", {**_DEC, **_KV}, None),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", {**_DEC, **_KV, "num_local_experts": 4,
                                                        "num_experts_per_tok": 2}, None),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {**_DEC, **_KV}, None),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", {**_DEC, **_KV, "num_experts": 4, "num_experts_per_tok": 2,
                                                            "moe_intermediate_size": 64,
                                                            "shared_expert_intermediate_size": 64}, None),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {**_DEC, **_KV, "head_dim": 16}, None),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", {**_DEC, **_KV, "head_dim": 16, "num_experts": 4,
                                                            "num_experts_per_tok": 2, "moe_intermediate_size": 64},
                  None),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", {**_DEC, **_KV, "head_dim": 16}, None),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", {**_DEC, **_KV, "head_dim": 16}, None),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", {**_DEC, **_KV, "head_dim": 16}, None),
    "phi": ("PhiForCausalLM", "PhiConfig", _DEC, None),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {**_DEC, **_KV, "pad_token_id": 0}, None),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", {**_DEC, **_KV}, None),
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(vocab_size=V, hidden_size=H, num_hidden_layers=3,
                                                         num_attention_heads=4), None),
    "codegen": ("CodeGenForCausalLM", "CodeGenConfig", dict(vocab_size=V, n_embd=H, n_layer=3, n_head=4,
                                                            rotary_dim=8, n_positions=128, n_ctx=128), None),
    "olmo": ("OlmoForCausalLM", "OlmoConfig", {**_DEC, **_KV, "pad_token_id": 0}, None),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", {**_DEC, **_KV, "pad_token_id": 0}, None),
    "olmoe": ("OlmoeForCausalLM", "OlmoeConfig", {**_DEC, **_KV, "pad_token_id": 0, "num_experts": 4,
                                                  "num_experts_per_tok": 2}, None),
    "starcoder2": ("Starcoder2ForCausalLM", "Starcoder2Config", {**_DEC, **_KV}, None),
    "gpt_bigcode": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(vocab_size=V, n_embd=H, n_layer=3, n_head=4,
                                                                      n_positions=128), None),
    "cohere": ("CohereForCausalLM", "CohereConfig", {**_DEC, **_KV, "pad_token_id": 0}, None),
    "granite": ("GraniteForCausalLM", "GraniteConfig", {**_DEC, **_KV}, None),
    "mpt": ("MptForCausalLM", "MptConfig", dict(vocab_size=V, d_model=H, n_layers=3, n_heads=4, max_seq_len=128), None),
    "persimmon": ("PersimmonForCausalLM", "PersimmonConfig", _DEC, None),
    "xglm": ("XGLMForCausalLM", "XGLMConfig", dict(vocab_size=V, d_model=H, num_layers=3, attention_heads=4,
                                                   ffn_dim=128, max_position_embeddings=128), None),
    "biogpt": ("BioGptForCausalLM", "BioGptConfig", _DEC, None),
    "openai_gpt": ("OpenAIGPTLMHeadModel", "OpenAIGPTConfig", dict(vocab_size=V, n_embd=H, n_layer=3, n_head=4,
                                                                   n_positions=128), None),
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(vocab_size=V, hidden_size=H, num_hidden_layers=3,
                                                      state_size=8), None),
    "helium": ("HeliumForCausalLM", "HeliumConfig", {**_DEC, **_KV, "head_dim": 16}, None),
    "glm": ("GlmForCausalLM", "GlmConfig", {**_DEC, **_KV, "head_dim": 16, "pad_token_id": 0}, None),
    "smollm3": ("SmolLM3ForCausalLM", "SmolLM3Config", {**_DEC, **_KV, "pad_token_id": 0}, None),
    "nemotron": ("NemotronForCausalLM", "NemotronConfig", {**_DEC, **_KV}, None),
    "jetmoe": ("JetMoeForCausalLM", "JetMoeConfig", dict(vocab_size=V, hidden_size=H, num_hidden_layers=3,
                                                         num_key_value_heads=4, kv_channels=16,
                                                         intermediate_size=128, num_local_experts=4,
                                                         num_experts_per_tok=2, max_position_embeddings=128), None),
    "diffllama": ("DiffLlamaForCausalLM", "DiffLlamaConfig", {**_DEC, **_KV}, None),
    # --- encoders (sequence classification, 3 labels) ---------------------------------------------------------
    "bert": ("BertForSequenceClassification", "BertConfig", _ENC, None),
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig", {**_ENC, "max_position_embeddings": 130}, None),
    "distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig",
                   dict(vocab_size=V, dim=H, n_layers=3, n_heads=4, hidden_dim=128, max_position_embeddings=128,
                        num_labels=3), None),
    "albert": ("AlbertForSequenceClassification", "AlbertConfig", {**_ENC, "embedding_size": 32}, None),
    "electra": ("ElectraForSequenceClassification", "ElectraConfig", {**_ENC, "embedding_size": 32}, None),
    "deberta": ("DebertaForSequenceClassification", "DebertaConfig", _ENC, None),
    "deberta_v2": ("DebertaV2ForSequenceClassification", "DebertaV2Config", _ENC, None),
    "xlm_roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig",
                    {**_ENC, "max_position_embeddings": 130}, "tokens"),
    "mpnet": ("MPNetForSequenceClassification", "MPNetConfig", {**_ENC, "max_position_embeddings": 130}, None),
    "convbert": ("ConvBertForSequenceClassification", "ConvBertConfig", {**_ENC, "embedding_size": H}, None),
    "squeezebert": ("SqueezeBertForSequenceClassification", "SqueezeBertConfig",
                    {**_ENC, "embedding_size": H}, None),
    "mobilebert": ("MobileBertForSequenceClassification", "MobileBertConfig",
                   {**_ENC, "embedding_size": 32, "intra_bottleneck_size": 32, "true_hidden_size": 32}, None),
    "ernie": ("ErnieForSequenceClassification", "ErnieConfig", _ENC, None),
    "roformer": ("RoFormerForSequenceClassification", "RoFormerConfig", _ENC, None),
    "funnel": ("FunnelForSequenceClassification", "FunnelConfig",
               dict(vocab_size=V, d_model=H, n_head=4, d_head=16, d_inner=128, block_sizes=[1, 1], num_labels=3),
               None),
    "modernbert": ("ModernBertForSequenceClassification", "ModernBertConfig", {**_ENC, "pad_token_id": 0}, None),
    "megatron_bert": ("MegatronBertForSequenceClassification", "MegatronBertConfig", _ENC, None),
    "rembert": ("RemBertForSequenceClassification", "RemBertConfig",
                {**_ENC, "input_embedding_size": 32, "output_embedding_size": 32}, None),
    "fnet": ("FNetForSequenceClassification", "FNetConfig", _ENC, None),
    # --- encoder-decoders (token ids plus decoder_input_ids: see BATCHES) ------------------------------------
    "t5": ("T5ForConditionalGeneration", "T5Config", dict(vocab_size=V, d_model=H, d_kv=16, d_ff=128, num_layers=2,
                                                          num_heads=4, decoder_start_token_id=0), "seq2seq"),
    "bart": ("BartForConditionalGeneration", "BartConfig", dict(vocab_size=V, d_model=H, encoder_layers=2,
                                                                decoder_layers=2, encoder_attention_heads=4,
                                                                decoder_attention_heads=4, encoder_ffn_dim=128,
                                                                decoder_ffn_dim=128, max_position_embeddings=128),
             "seq2seq"),
    # --- vision (image classification, 10 labels, 8x3x32x32 pixels) -------------------------------------------
    "vit": ("ViTForImageClassification", "ViTConfig", dict(image_size=32, patch_size=4, hidden_size=H,
                                                           num_hidden_layers=3, num_attention_heads=4,
                                                           intermediate_size=128, **_IMG), (8, 3, 32, 32)),
    "deit": ("DeiTForImageClassification", "DeiTConfig", dict(image_size=32, patch_size=4, hidden_size=H,
                                                             num_hidden_layers=3, num_attention_heads=4,
                                                             intermediate_size=128, **_IMG), (8, 3, 32, 32)),
    "beit": ("BeitForImageClassification", "BeitConfig", dict(image_size=32, patch_size=4, hidden_size=H,
                                                             num_hidden_layers=3, num_attention_heads=4,
                                                             intermediate_size=128, vocab_size=V, **_IMG),
             (8, 3, 32, 32)),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", dict(image_size=32, patch_size=4, hidden_size=H,
                                                                     num_hidden_layers=3, num_attention_heads=4,
                                                                     **_IMG), (8, 3, 32, 32)),
    "swin": ("SwinForImageClassification", "SwinConfig", dict(image_size=32, patch_size=2, embed_dim=16,
                                                             depths=[1, 1], num_heads=[2, 4], window_size=4, **_IMG),
             (8, 3, 32, 32)),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig", dict(hidden_sizes=[16, 32, 64, 128],
                                                                         depths=[1, 1, 2, 1], **_IMG), (8, 3, 64, 64)),
    "convnextv2": ("ConvNextV2ForImageClassification", "ConvNextV2Config", dict(hidden_sizes=[16, 32, 64, 128],
                                                                               depths=[1, 1, 2, 1], **_IMG),
                   (8, 3, 64, 64)),
    "resnet": ("ResNetForImageClassification", "ResNetConfig", dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                                                    depths=[1, 1, 1, 1], **_IMG), (8, 3, 64, 64)),
    "regnet": ("RegNetForImageClassification", "RegNetConfig", dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                                                    depths=[1, 1, 2, 1], groups_width=8, **_IMG),
               (8, 3, 64, 64)),
    "mobilenet_v1": ("MobileNetV1ForImageClassification", "MobileNetV1Config", dict(depth_multiplier=0.25,
                                                                                   image_size=64, **_IMG),
                     (8, 3, 64, 64)),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", "MobileNetV2Config", dict(depth_multiplier=0.35,
                                                                                   image_size=64, **_IMG),
                     (8, 3, 64, 64)),
    "efficientnet": ("EfficientNetForImageClassification", "EfficientNetConfig", dict(width_coefficient=0.25,
                                                                                     depth_coefficient=0.25,
                                                                                     image_size=64, hidden_dim=320,
                                                                                     **_IMG),
                     (8, 3, 64, 64)),
    "levit": ("LevitForImageClassification", "LevitConfig", dict(image_size=224, hidden_sizes=[32, 48, 64],
                                                                num_attention_heads=[2, 2, 2], depths=[1, 1, 1],
                                                                key_dim=[8, 8, 8], **_IMG), (8, 3, 224, 224)),
    "poolformer": ("PoolFormerForImageClassification", "PoolFormerConfig", dict(hidden_sizes=[16, 32, 64, 128],
                                                                               depths=[1, 1, 1, 1], **_IMG),
                   (8, 3, 64, 64)),
    "bit": ("BitForImageClassification", "BitConfig", dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256],
                                                           depths=[1, 1, 1, 1], num_groups=8, **_IMG),
            (8, 3, 64, 64)),
    "mobilevit": ("MobileViTForImageClassification", "MobileViTConfig", dict(image_size=128, hidden_sizes=[32, 48, 64],
                                                                            neck_hidden_sizes=[8, 8, 16, 16, 24, 32,
                                                                                               64], **_IMG),
                  (8, 3, 128, 128)),
    "segformer": ("SegformerForImageClassification", "SegformerConfig", dict(hidden_sizes=[16, 32, 64, 128],
                                                                            depths=[1, 1, 1, 1],
                                                                            decoder_hidden_size=64, **_IMG),
                  (8, 3, 64, 64)),
}


def build(name: str) -> torch.nn.Module:
    import transformers

    model_cls, cfg_cls, kwargs, _ = ARCHS[name]
    cfg = getattr(transformers, cfg_cls)(**kwargs)
    return getattr(transformers, model_cls)(cfg)


def input_shape(name: str) -> tuple | None:
    shape = ARCHS[name][3]
    return shape if isinstance(shape, tuple) else None


def needs_batch(name: str) -> str | None:
    return {"seq2seq": "seq2seq_batch", "tokens": "token_batch"}.get(ARCHS[name][3])


def token_batch():
    """Token ids 8 x 32 (for models whose first registered layer is not the embedding)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, V, (8, 32), generator=g)


def seq2seq_batch():
    """Token ids for the encoder and the decoder (8 x 32 and 8 x 16)."""
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, V, (8, 32), generator=g),
            "decoder_input_ids": torch.randint(1, V, (8, 16), generator=g)}


def _factory(name: str):
    def make():
        return build(name)
    make.__name__ = name
    make.__doc__ = f"{ARCHS[name][0]} from a small {ARCHS[name][1]} (random init)."
    return make


for _n in ARCHS:
    globals()[_n] = _factory(_n)


def llama_init_1e_5():
    """Broken: a Llama with initializer_range=1e-5 (weights ~1e-5: the gradients of q/k/v vanish)."""
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_DEC, **_KV, "initializer_range": 1e-5}))


def llama_init_1():
    """Broken: a Llama with initializer_range=1.0 (huge, confidently wrong logits at step 0)."""
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_DEC, **_KV, "initializer_range": 1.0}))
