"""A random-init Llama folder and a text corpus for the multi-GPU loss check, made offline.

The GPU machines have no network, so neither a hub model nor the ``tiny-random-llama`` alias
(whose tokenizer comes through pip) can be fetched there. This writes, from this Python's own
standard library and nothing else:

- ``DATA/``: every top-level ``*.py`` file of the standard library, copied as ``.txt``
  (about 4-5 MB of text, ~170 files, so the by-file validation split holds whole sequences);
- ``MODEL/``: a byte-level BPE tokenizer trained on that text (``tokenizers``) and a seeded
  random-init ``LlamaForCausalLM`` of the chosen size, saved with ``save_pretrained``: a local
  Hugging Face folder that ``lh-convert extend --model MODEL`` (or a recipe) converts.

Usage: python experiments/multigpu/make_model.py --out MODEL --data DATA [--size gpu|rehearsal]
"""

from __future__ import annotations

import argparse
import shutil
import sysconfig
from pathlib import Path

EOS = "<|endoftext|>"
SIZES = {
    # Fits one H200 at 32K in seconds per step; 8 layers so 4 run Lighthouse (0, 1, -2, -1 dense).
    "gpu": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                head_dim=64, intermediate_size=1536, vocab=4096),
    "rehearsal": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab=512),
}


def write_corpus(data: Path) -> list[Path]:
    """Copy the standard library's top-level modules into ``data`` as ``.txt`` files."""
    data.mkdir(parents=True, exist_ok=True)
    files = []
    for module in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        target = data / f"{module.stem}.txt"
        shutil.copyfile(module, target)
        files.append(target)
    return files


def write_model(out: Path, *, files: list[Path], size: str) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dims = dict(SIZES[size])
    vocab = dims.pop("vocab")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(f) for f in files], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS)
    config = LlamaConfig(**dims, vocab_size=len(tokenizer), max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--data", type=Path, required=True, help="corpus folder to write")
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu")
    args = parser.parse_args()
    files = write_corpus(args.data)
    write_model(args.out, files=files, size=args.size)
    print(f"model {args.out} ({args.size}), corpus {args.data}: {len(files)} files, "
          f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
