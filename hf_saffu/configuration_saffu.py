"""Configuration of the SAFFU (self-attentive feed-forward unit) causal language model."""

import math

from transformers import PreTrainedConfig

EMBEDDING_CODES = ("frequency_rank", "anchored")
HIDDEN_TARGETS = ("bit_cipher", "clusters")
# explicit_smoothing alpha and 1 / alpha stay far inside float32 (ln alpha in [-69, 69]); the priming number K
# multiplies logs of counts (K ln(F + alpha), K ln phi), which must stay finite when cast to float32 weights.
SMOOTHING_RANGE = (1e-30, 1e30)
MAX_HIDDEN_PRIMING = 1e6


class SaffuConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SaffuForCausalLM`]: a stack of SAFFU layers on bit-cipher embeddings.

    Every layer reads a sequence of non-negative vectors and, for each *context* (one per window size
    in `windows`, plus the running document mean when `use_document_context`), computes

        s_t = X_t v_t,   a_t = softmax(s_t W + c),   z_t = a_t X_t,   h_t = softmax(z_t U + b)

    and concatenates the hidden distributions, H_t = [h_t^1 ... h_t^C]. The next layer reads H_t / C;
    the last one predicts the next token with logits = H_t O + b_O.

    Args:
        vocab_size (`int`): number of tokens.
        embed_bits (`int`): width of the bit-cipher token embeddings; needs 2^embed_bits - 1 >= vocab_size.
        hidden_bits (`int`): width of every context's hidden distribution (the bit-cipher label
            embeddings used as hidden targets in the explicit warm start); needs 2^hidden_bits - 1 >= vocab_size.
        windows (`list[int]`): sizes K of the window contexts (the last K positions, pivot included).
        use_document_context (`bool`): add the running mean of the document's inputs as a context.
        num_layers (`int`): number of stacked SAFFU layers.
        explicit_smoothing (`float`): additive floor alpha of the co-occurrence counts, ln(F + alpha).
        explicit_hidden_priming (`float` or `"features"`, *optional*): priming number K of every hidden layer's
            explicit solution. `None`: K = mean ||z_t||_1 = 1, so U = ln(F + alpha). A number K treats each z_t
            as K observations (naive Bayes): U = K ln(F + alpha), b = -(K - 1) ln phi, a sharper hidden
            distribution. `"features"` (the authors' account: the number of features behind one prediction):
            per context, K = the mean number of inputs z_t mixes (valid window positions; document length).
        explicit_discount (`float`, *optional*): `None`: the additive floor ln(F + alpha). A value D: absolute
            discounting with back-off to the column marginal, ln(max(F - D, 0) + (R + alpha) pi) (the closed
            form behind Kneser-Ney; `hf_saffu.explicit.discounted_counts`).
        embedding_codes (`str`): which bit-cipher code each token gets in the explicit warm start.
            `"frequency_rank"` (the paper's form): the code of its frequency rank. `"anchored"`: the same code
            levels, but bit i stands for the i-th most frequent token and a rarer token sets the bits of the
            frequent tokens whose successors resemble its own.
        hidden_targets (`str`): the local targets of the hidden layers in the explicit warm start.
            `"bit_cipher"` (the paper's form): the next token's `hidden_bits`-bit bit-cipher label code.
            `"clusters"`: the one-hot class of the next token among `hidden_bits` classes of tokens with
            similar predecessors (counted in the warm start), so h_t is a distribution over next-token classes.
        log_hidden_head (`bool`): the language-model head reads ln H_t instead of H_t, logits = ln(H_t) O + b_O:
            a product of the contexts' hidden distributions. With class targets the warm start sets
            O and b_O to the class-based factorisation P(y | ctx) = P(y | class(y)) prod_c h^c(class(y)) / ...
        pivot_head (`bool`): add a direct path from the pivot's embedding to the logits, logits += v_t Q
            (Q: embed_bits x vocab_size). Its explicit solution is ln P(y | pivot): for a pivot with a one-bit
            code, the (discounted) bigram row of that token.
        explicit_context_weight (`float`): weight beta of every context's class evidence in the explicit
            solution of a log-reading head, logits_y = beta sum_c (ln h^c(k(y)) - ln pi(k(y))) + ...; 1 is
            naive Bayes over the contexts (they overlap, so smaller weights are better calibrated).
        freeze_embeddings (`bool`): keep the bit-cipher embeddings fixed during backprop.
        contextual_embeddings (`bool`): the warm start replaces the bit-cipher vectors by contextual ones
            (the normalised sum of the neighbours' codes within `contextual_radius`).
        contextual_radius (`int`): neighbourhood radius of the contextual embeddings.
        initializer_range (`float`): standard deviation of the random initialisation of the dense layers.
        warm_started (`bool`): set by the explicit warm start, so it is not redone after reloading.
    """

    model_type = "saffu"

    def __init__(
        self,
        vocab_size: int = 8192,
        embed_bits: int = 64,
        hidden_bits: int = 128,
        windows: list[int] | tuple[int, ...] = (1, 4, 16),
        use_document_context: bool = True,
        num_layers: int = 1,
        explicit_smoothing: float = 1e-2,
        explicit_hidden_priming: float | str | None = None,
        explicit_discount: float | None = None,
        embedding_codes: str = "frequency_rank",
        hidden_targets: str = "bit_cipher",
        log_hidden_head: bool = False,
        pivot_head: bool = False,
        explicit_context_weight: float = 1.0,
        freeze_embeddings: bool = True,
        contextual_embeddings: bool = False,
        contextual_radius: int = 2,
        initializer_range: float = 0.02,
        warm_started: bool = False,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.embed_bits = embed_bits
        self.hidden_bits = hidden_bits
        self.windows = list(windows) if isinstance(windows, (list, tuple)) else windows
        self.use_document_context = use_document_context
        self.num_layers = num_layers
        self.explicit_smoothing = explicit_smoothing
        self.explicit_hidden_priming = explicit_hidden_priming
        self.explicit_discount = explicit_discount
        self.embedding_codes = embedding_codes
        self.hidden_targets = hidden_targets
        self.log_hidden_head = log_hidden_head
        self.pivot_head = pivot_head
        self.explicit_context_weight = explicit_context_weight
        self.freeze_embeddings = freeze_embeddings
        self.contextual_embeddings = contextual_embeddings
        self.contextual_radius = contextual_radius
        self.initializer_range = initializer_range
        self.warm_started = warm_started
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_saffu()

    @property
    def num_contexts(self) -> int:
        """C: the number of contexts whose hidden distributions every layer concatenates."""
        return len(self.windows) + int(self.use_document_context)

    @property
    def max_window(self) -> int:
        """The longest window; the decoding state keeps max_window - 1 past inputs per layer."""
        return max(self.windows, default=1)

    def validate_saffu(self) -> None:
        """Raise a `ValueError` naming the first invalid field and its allowed range."""

        def positive_int(name: str, value) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SaffuConfig.{name} must be an integer >= 1, got {value!r}")

        positive_int("vocab_size", self.vocab_size)
        positive_int("num_layers", self.num_layers)
        positive_int("contextual_radius", self.contextual_radius)
        for name in ("embed_bits", "hidden_bits"):
            bits = getattr(self, name)
            positive_int(name, bits)
            if 2**bits - 1 < self.vocab_size:
                needed = self.vocab_size.bit_length()
                raise ValueError(
                    f"SaffuConfig.{name}={bits} gives only 2^{bits} - 1 = {2**bits - 1} bit-cipher codes for "
                    f"vocab_size={self.vocab_size}; it must be >= {needed}"
                )
        if not isinstance(self.windows, list):
            raise ValueError(f"SaffuConfig.windows must be a list of integers >= 1, got {self.windows!r}")
        for index, k in enumerate(self.windows):
            positive_int(f"windows[{index}]", k)
        if len(set(self.windows)) != len(self.windows):
            raise ValueError(f"SaffuConfig.windows must not repeat a size, got {self.windows}")
        if self.num_contexts == 0:
            raise ValueError(
                "SaffuConfig needs at least one context: give windows (e.g. [4, 16]) or use_document_context=True"
            )
        bounded_number("explicit_smoothing", self.explicit_smoothing, *SMOOTHING_RANGE, "ln(F + alpha) needs alpha > 0")
        if self.explicit_hidden_priming not in (None, "features"):
            bounded_number(
                "explicit_hidden_priming",
                self.explicit_hidden_priming,
                0,
                MAX_HIDDEN_PRIMING,
                'or None: K = 1, or "features": the inputs behind z_t',
            )
        if self.embedding_codes not in EMBEDDING_CODES:
            raise ValueError(
                f"SaffuConfig.embedding_codes must be one of {EMBEDDING_CODES}, got {self.embedding_codes!r}"
            )
        if self.hidden_targets not in HIDDEN_TARGETS:
            raise ValueError(f"SaffuConfig.hidden_targets must be one of {HIDDEN_TARGETS}, got {self.hidden_targets!r}")
        if self.explicit_discount is not None:
            bounded_number("explicit_discount", self.explicit_discount, 0, MAX_HIDDEN_PRIMING, "or None: no discount")
        bounded_number("explicit_context_weight", self.explicit_context_weight, 0, MAX_HIDDEN_PRIMING, closed=True)
        for name in ("log_hidden_head", "pivot_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SaffuConfig.{name} must be true or false, got {getattr(self, name)!r}")
        bounded_number("initializer_range", self.initializer_range, 0, math.inf)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(self, name, None)
            if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < self.vocab_size):
                raise ValueError(
                    f"SaffuConfig.{name} must be a token id in [0, vocab_size={self.vocab_size}), got {token_id!r}"
                )


def bounded_number(name: str, value, low: float, high: float, note: str = "", closed: bool = False) -> None:
    """Raise a `ValueError` naming SaffuConfig.`name` unless `value` is a finite real number with
    low < value <= high (low <= value with `closed`)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    above = is_number and (value >= low if closed else value > low)
    if not (is_number and math.isfinite(value) and above and value <= high):
        upper = "" if math.isinf(high) else f" and <= {high:g}"
        relation = ">=" if closed else ">"
        raise ValueError(
            f"SaffuConfig.{name} must be a finite number {relation} {low:g}{upper}"
            f"{f' ({note})' if note else ''}, got {value!r}"
        )


__all__ = ["SaffuConfig"]
