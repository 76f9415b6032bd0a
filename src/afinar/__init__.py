"""afinar: self-hosted model customization (fine-tuning, evaluation, serving) on your own machine."""

__version__ = "0.1.0"

# bitsandbytes (imported by peft and transformers when installed) warns on import, on CPUs with
# AVX512-BF16, that its optional `kernels` package (which fetches code from the Hugging Face
# hub) is missing; afinar never fetches code, and bitsandbytes' own CPU path is used instead.
__import__("logging").getLogger("bitsandbytes.backends.cpu.ops").setLevel("ERROR")
