"""Configuration of the SAFFU (self-attentive feed-forward unit) causal language model.

This file ships to the Hub with saved models, with modeling_saffu.py and bit_cipher.py: it imports nothing
outside the standard library and transformers (no hf_saffu module), so a saved model loads with
`trust_remote_code=True` where hf_saffu is not installed.
"""

import dataclasses
import math
from typing import Literal

from transformers import PreTrainedConfig

EMBEDDING_CODES = ("frequency_rank", "anchored")
HIDDEN_TARGETS = ("bit_cipher", "clusters")
UPPER_LAYERS = ("head", "neural")
# explicit_smoothing alpha and 1 / alpha stay far inside float32 (ln alpha in [-69, 69]); the priming number K
# multiplies logs of counts (K ln(F + alpha), K ln phi), which must stay finite when cast to float32 weights.
SMOOTHING_RANGE = (1e-30, 1e30)
MAX_HIDDEN_PRIMING = 1e6
DEFAULT_PIVOT_BIGRAMS = 2**19  # every distinct pair of Brown's 1.2M tokens (about 350,000) fits
DEFAULT_PIVOT_TRIGRAMS = 2**20  # every distinct triple of Brown's 1.2M tokens fits (and the default of higher orders)
DEFAULT_NGRAM_ORDER = 3
# A table of order n keys its n-grams as integers sum_i x_i V^i (int64): vocab_size^ngram_order must stay below this.
MAX_NGRAM_KEY = 2**63
# Sizes refused before anything is allocated: beyond them a model cannot be built in memory (or, for num_layers,
# trained in any reasonable time). 2^32 tensor elements are 16 GiB of float32 (32 GiB for the int64 tables).
MAX_TENSOR_ELEMENTS = 2**32
MAX_BITS = 2**16
MAX_MIXTURE_CONTEXT = 64  # tokens the neural word model reads in order (its decoding state keeps them)
MAX_CACHE_WINDOW = 4096  # tokens the mixture's cache reads (its decoding state keeps them)
MAX_NUM_LAYERS = 256
BOOLEAN_FIELDS = (
    "log_hidden_head",
    "pivot_head",
    "use_document_context",
    "freeze_embeddings",
    "warm_started",
    "neural_mixture_tied_output",
)
DEFAULT_PIVOT_TABLE_MB = 512.0  # the tables' memory budget in the warm start: about 19M trigram entries


@dataclasses.dataclass(kw_only=True)
class ExplicitWarmStartConfig:
    r"""
    The explicit warm start's recipe: how `hf_saffu.warm_start` computes a [`SaffuForCausalLM`]'s weights from the
    counts of its training data. It is held by the model's config (`SaffuConfig.warm_start_recipe`) and saved with
    it, for the record, as the nested dict `warm_start_recipe` of config.json; the forward pass reads none of it.
    Its fields are also keyword arguments of `SaffuConfig` and flags of `hf-saffu train`, under the same names.

    Args:
        explicit_smoothing (`float`, *optional*, defaults to 0.01):
            Additive floor alpha of the co-occurrence counts, ln(F + alpha).
        explicit_hidden_priming (`float` or `"features"`, *optional*, defaults to `None`):
            Priming number K of every hidden layer's explicit solution. `None`: K = mean ||z_t||_1 = 1, so
            U = ln(F + alpha). A number K treats each z_t as K observations (naive Bayes): U = K ln(F + alpha),
            b = -(K - 1) ln phi, a sharper hidden distribution. `"features"` (the authors' account: the number of
            features behind one prediction): per context, K = the mean number of inputs z_t mixes (valid window
            positions; document length).
        explicit_discount (`float`, *optional*, defaults to 0.75):
            Absolute discount D of every explicit solution, ln(max(F - D, 0) + (R + alpha) pi), the closed form
            behind Kneser-Ney (`hf_saffu.explicit.discounted_counts`); `None` (paper): the additive floor
            ln(F + alpha).
        embedding_codes (`str`, *optional*, defaults to `"anchored"`):
            Which bit-cipher code each token gets in the explicit warm start. `"frequency_rank"` (paper): the
            code of its frequency rank. `"anchored"`: the same code levels, but bit i stands for the i-th most
            frequent token and a rarer token sets the bits of the frequent tokens whose successors resemble its
            own (`hf_saffu.token_classes`).
        hidden_targets (`str`, *optional*, defaults to `"clusters"`):
            The local targets of the hidden layers in the explicit warm start. `"bit_cipher"` (paper): the next
            token's `hidden_bits`-bit label code. `"clusters"`: the one-hot class of the next token among
            `hidden_bits` classes of tokens with similar predecessors, so h_t is a distribution over next-token
            classes.
        explicit_context_weight (`float`, *optional*, defaults to 0.5):
            Weight beta of every context's class evidence in a log-reading head; 1 is naive Bayes over the
            contexts, which overlap, so smaller weights are better calibrated.
        contextual_embeddings (`bool`, *optional*, defaults to `False`):
            The warm start replaces the bit-cipher vectors by contextual ones (the normalised sum of the
            neighbours' codes within `contextual_radius`).
        contextual_radius (`int`, *optional*, defaults to 2):
            Neighbourhood radius of the contextual embeddings.
        explicit_attention_iters (`int`, *optional*, defaults to 1):
            Rounds of (attention targets -> W, then U again) after the uniform-attention U.
        warm_start_max_tokens (`int`, *optional*, defaults to `None`):
            Read at most this many training tokens (the first ceil(max_tokens / block size) blocks); `None`: all.
        warm_start_batch_size (`int`, *optional*, defaults to 32):
            Blocks per forward batch of the warm start's passes (memory and speed, not results: the counts are
            sums). 32 blocks of 128 tokens keep a pass's temporaries below glibc's mmap threshold, so they reuse
            memory instead of faulting in fresh pages: for configs/brown.yaml 32 was faster than 64 and 16 each time
            it was measured (docs/DESIGN.md, section 5).
        warm_start_cache_mb (`float`, *optional*, defaults to 2048):
            Memory (MB, 2^20 bytes) the warm start may keep what its passes read and compute in: first the batches
            of tokens its first pass reads (9 bytes a token), which the later passes then read from memory, then
            the last layer's contexts z_t from the pass that solves its hidden layers, which the passes reading H_t
            (the neural word model's, the output layer's) then take instead of computing the layer again (when that
            pass already has the final attention: `explicit_attention_iters` 0 or no windows; 1.5 KB a token for
            configs/brown.yaml). What does not fit is read or computed again. Speed, not results. 0: nothing kept.

    Example:

    ```python
    >>> from hf_saffu import ExplicitWarmStartConfig, SaffuConfig

    >>> # The paper's additive floor instead of discounting, on the first million training tokens
    >>> recipe = ExplicitWarmStartConfig(explicit_discount=None, warm_start_max_tokens=10**6)
    >>> configuration = SaffuConfig(vocab_size=4096, warm_start_recipe=recipe)

    >>> # The same recipe, given field by field
    >>> configuration = SaffuConfig(vocab_size=4096, explicit_discount=None, warm_start_max_tokens=10**6)
    >>> configuration.warm_start_recipe == recipe
    True

    ```
    """

    explicit_smoothing: float = 1e-2
    explicit_hidden_priming: float | Literal["features"] | None = None
    explicit_discount: float | None = 0.75
    explicit_context_weight: float = 0.5
    embedding_codes: str = "anchored"
    hidden_targets: str = "clusters"
    contextual_embeddings: bool = False
    contextual_radius: int = 2
    explicit_attention_iters: int = 1
    warm_start_max_tokens: int | None = None
    warm_start_batch_size: int = 32
    warm_start_cache_mb: float = 2048.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` naming the first invalid field (as the `SaffuConfig` keyword it is given as) and
        its allowed range."""
        if not isinstance(self.contextual_embeddings, bool):
            raise ValueError(
                f"SaffuConfig.contextual_embeddings must be true or false, got {self.contextual_embeddings!r}"
            )
        positive_int("contextual_radius", self.contextual_radius)
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
        non_negative_int("explicit_attention_iters", self.explicit_attention_iters)
        if self.warm_start_max_tokens is not None:
            positive_int("warm_start_max_tokens", self.warm_start_max_tokens, "or None: all")
        positive_int("warm_start_batch_size", self.warm_start_batch_size)
        bounded_number("warm_start_cache_mb", self.warm_start_cache_mb, 0, math.inf, "0: nothing kept", closed=True)


RECIPE_FIELDS = tuple(field.name for field in dataclasses.fields(ExplicitWarmStartConfig))


def recipe_from(recipe: "ExplicitWarmStartConfig | dict | None", kwargs: dict) -> ExplicitWarmStartConfig:
    """The recipe of a `SaffuConfig`: `recipe` (an object, its dict from config.json, or None for the defaults)
    with the recipe's fields given flat among `kwargs` (taken out of them) on top."""
    if recipe is not None and not isinstance(recipe, ExplicitWarmStartConfig | dict):
        raise ValueError(f"SaffuConfig.warm_start_recipe must be an ExplicitWarmStartConfig or a dict, got {recipe!r}")
    given = dataclasses.asdict(recipe) if isinstance(recipe, ExplicitWarmStartConfig) else dict(recipe or {})
    unknown = sorted(set(given) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(f"SaffuConfig.warm_start_recipe has unknown fields {unknown}; known: {list(RECIPE_FIELDS)}")
    given |= {name: kwargs.pop(name) for name in RECIPE_FIELDS if name in kwargs}
    return ExplicitWarmStartConfig(**given)


class SaffuConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SaffuForCausalLM`]: a stack of SAFFU layers on bit-cipher embeddings.

    Every layer reads a sequence of non-negative vectors and, for each *context* (one per window size
    in `windows`, plus the running document mean when `use_document_context`), computes

        s_t = X_t v_t,   a_t = softmax(s_t W + c),   z_t = a_t X_t,   h_t = softmax(z_t U + b)

    and concatenates the hidden distributions, H_t = [h_t^1 ... h_t^C]. The next layer reads H_t / C; the
    head predicts the next token with logits = ln(H_t) O + b_O plus a channel from the pivot token itself (its
    exact n-gram rows, `ngram_order`, or v_t Q, `pivot_head`) or, in the paper's form, logits = H_t O + b_O.

    The defaults are this project's explicit warm start (docs/DESIGN.md): anchored codes, class targets, a
    log-reading head, the pivot's bigram and trigram tables and discounted counts.
    `SaffuConfig(**SaffuConfig.PAPER_FORM)` gives the published forms (frequency-rank codes, bit-cipher label
    targets, a probability-reading head, the additive floor), so results stay comparable.

    Args:
        vocab_size (`int`, *optional*, defaults to 8192):
            Number of tokens.
        embed_bits (`int`, *optional*, defaults to 128):
            Width of the bit-cipher token embeddings; needs 2^embed_bits - 1 >= vocab_size.
        hidden_bits (`int`, *optional*, defaults to 96):
            Width of every context's hidden distribution (the number of token classes, or of label-code bits,
            used as hidden targets in the explicit warm start); needs 2^hidden_bits - 1 >= vocab_size.
        windows (`list[int]`, *optional*, defaults to `[4, 16]`):
            Sizes K of the window contexts (the last K positions, pivot included).
        use_document_context (`bool`, *optional*, defaults to `True`):
            Add the running mean of the document's inputs as a context.
        num_layers (`int`, *optional*, defaults to 1):
            Number of stacked SAFFU layers.
        upper_layers (`str`, *optional*, defaults to `"head"`):
            What reads the layers above the first. `"head"` (the papers' form): the head reads the last layer's H_t.
            `"neural"` [ours]: the head and the neural word model's direct path read the first layer's H_t (what a
            one-layer model reads), the neural word model's hidden path reads every layer's H_t, and the layers
            above the first train with the neural word model (also with `freeze_counted_parts`). Needs
            `neural_mixture_dim` > 0 when `num_layers` > 1.
        log_hidden_head (`bool`, *optional*, defaults to `True`):
            The head reads ln H_t instead of H_t: a product of the contexts' hidden distributions. With class
            targets the warm start sets O and b_O to the class-based factorisation
            logits_y = beta sum_c (ln h^c(k(y)) - ln pi(k(y))) + ln P(y) (`hf_saffu.warm_start`).
        pivot_head (`bool`, *optional*, defaults to `False`):
            A direct path from the pivot's embedding to the logits, logits += v_t Q (Q: embed_bits x
            vocab_size). Its explicit solution is ln P(y | pivot bits): for a pivot with a one-bit code, the
            (discounted) bigram row of that token; it then replaces ln P(y) in the bias.
        ngram_order (`int`, *optional*, defaults to 3):
            Order n of the pivot's n-gram channel [ours]: the tables of orders 2 ... n, each an interpolated
            Kneser-Ney level over the one below (`hf_saffu.explicit.solve_ngram_channel`). 2: the bigram table
            alone, logits += b + S[x_t] (the explicit solution of a softmax layer on the one-hot pivot token, ln
            P(y | x_t), stored as a bias and a sparse table of seen (pivot, next token) pairs, `SaffuPivotBigrams`);
            3: and the (previous, pivot) table over it, logits += T[(x_{t-1}, x_t)]; n > 3: one more table per order,
            keyed by the last n - 1 tokens (`SaffuNgramTable`); 0 or 1: no tables. Needs vocab_size^ngram_order <
            2^63 (the n-grams' integer keys). `None`: 3, or 1 with `pivot_head` (one of the two channels).
        ngram_capacities (`list[int]`, *optional*, defaults to `None`):
            Entries of the tables of orders 2 ... ngram_order (at most vocab_size^order each; see `pivot_table_mb`).
            `None`: 2^19 for the bigram table, 2^20 for each higher order. `pivot_bigrams` and `pivot_trigrams`
            (the fields of earlier versions) are read as the capacities of orders 2 and 3 and, without
            `ngram_order`, set it (0: no table of that order).
        pivot_table_mb (`float`, *optional*, defaults to 512):
            The tables follow the data: the warm start sizes every table to the distinct n-grams it sees, within
            this many megabytes (2^20 bytes) of table memory (the lower orders first), and writes the sizes it chose
            into `ngram_capacities`, so a saved model reloads with the same shapes. Where entries must be dropped,
            the warm start keeps those of largest contribution n ln(P / P_backoff) (weighted-difference pruning,
            `hf_saffu.warm_start.strongest_entries`). `None`: fixed sizes, `ngram_capacities` as given (the warm
            start then prunes to them in the same way).
        residual_rank (`int`, *optional*, defaults to 0):
            Rank r of a word-level correction of the logits from the last layer's hidden distributions,
            logits += H_t A B (A: C hidden_bits x r, B: r x vocab_size, B = 0 at initialisation, so the warm
            start's logits are unchanged; 0: none) [ours]: residual learning over the n-gram logits.
        neural_mixture_dim (`int`, *optional*, defaults to 0):
            Width d of a neural word model mixed linearly with the rest (`SaffuNeuralMixture`; 0: none) [ours]:
            p(y) = (1 - lambda_t) softmax(logits)_y + lambda_t softmax(g_t W + b_W)_y, g_t = GELU(u_t A + a) from
            u_t = [H_t, v_t, v_{t-1}] (the last layer's hidden distributions, the pivot's and the previous
            token's embeddings), lambda_t = sigmoid(g_t w + c). The model's logits are then ln p.
        neural_mixture_weight (`float`, *optional*, defaults to 0.05):
            lambda before training (c = logit of it, w = 0).
        neural_mixture_context (`int`, *optional*, defaults to 2):
            k, the tokens (pivot included) whose codes the neural word model reads in order [ours]: its hidden
            path g_t = GELU([u_t, v_{t-2}, ..., v_{t-k+1}] A + a) reads k - 2 codes past u_t's two (a Bengio-style
            concatenation; v = 0 where there is no token); the direct path D reads u_t alone.
        neural_mixture_classes (`int`, *optional*, defaults to 0):
            C > 0: the neural word model's output factored through C token classes [ours] (Goodman 2001; the
            class-based output of Mikolov's RNN LMs), p_N(y) = softmax(u_t D^c + g_t W^c + b^c)_{k(y)}
            softmax_{y' in k(y)}(u_t D + g_t W + b_W)_y, k(y) the warm start's token clusters
            (`hf_saffu.token_classes`). A training step then reads the target's class instead of the whole
            vocabulary. 0: one softmax over the vocabulary.
        neural_mixture_attention_window (`int`, *optional*, defaults to 0):
            w > 0: the neural word model's hidden path also reads a learned attention over the last w tokens, the
            pivot included (`SaffuNeuralAttention`) [ours]: per head h, a_t = sum_j softmax_j(q(x_t) . k(x_{t-j}) /
            sqrt(d_h) + beta_hj) v(x_{t-j}), q, k, v = LN(E) W_q, W_k, W_v of learned token embeddings E and beta_hj
            a learned bias per head and offset; g_t = GELU([o_t, a_t] A + a). A learned view of the recent text for
            what the counts cannot hold; trained by backprop only (W = 0 leaves the warm start unchanged); the
            decoding state keeps w - 1 tokens. 0: none.
        neural_mixture_attention_dim (`int`, *optional*, defaults to 128):
            d, the width of E and of a_t.
        neural_mixture_attention_heads (`int`, *optional*, defaults to 4):
            Heads of the attention (d_h = d / heads).
        neural_mixture_dropout (`float`, *optional*, defaults to 0.0):
            p, the dropout probability on the neural word model's hidden features g_t and attention output a_t
            during training [ours]: regularises its multi-epoch training. 0: none.
        neural_mixture_tied_output (`bool`, *optional*, defaults to `False`):
            The neural word model's word weights tied to the attention's token embeddings [ours]: W = P E^T with a
            learned P (neural_mixture_dim x neural_mixture_attention_dim) instead of a free W (neural_mixture_dim x
            vocab_size), as GPT-2 ties its output to its input embeddings (Press and Wolf 2017). Needs
            neural_mixture_attention_window > 0. P starts at 0, so the warm start is unchanged.
        neural_mixture_aux_loss_coef (`float`, *optional*, defaults to 0.0):
            alpha >= 0: in training, the loss adds alpha times the neural word model's own cross-entropy,
            -alpha mean_t ln p_N(y_t) [ours] (as Mixtral's `router_aux_loss_coef` adds its router's loss). The
            mixture's likelihood alone trains p_N through the posterior r_t = lambda_t p_N(y_t) / p(y_t), so only
            where the counts fail; with alpha > 0 every token trains p_N as a language model of its own, as a GPT-2
            interpolated with Kneser-Ney is trained. Evaluation reads the mixture alone. 0: none.
        neural_mixture_token_context (`int`, *optional*, defaults to 0):
            n <= neural_mixture_attention_window: the neural word model's hidden path also reads the learned
            embeddings of the last n tokens in order, the pivot included [ours]: g_t = GELU([o_t, a_t, LN(E)[x_t],
            ..., LN(E)[x_{t-n+1}]] A + a) with the attention's token embeddings E (0 where there is no token). A
            Bengio-style concatenation of free embeddings: the codes of `neural_mixture_context` are fixed, so their
            block of A is an embedding of rank <= embed_bits, and the attention mixes positions. 0: none.
        neural_mixture_cache_window (`int`, *optional*, defaults to 0):
            W > 0: a cache of the last W tokens, the pivot included, mixed in after the neural mixture
            (`SaffuTokenCache`) [ours] (Kuhn and De Mori 1990; Grave et al. 2017): p_K(y) = sum_j softmax_j(beta_j)
            [x_{t-j} = y] over the known tokens x_t, ..., x_{t-W+1}, beta a learned bias per offset (0: the window's
            unigram counts), and p = (1 - kappa_t) p_mixture + kappa_t p_K, kappa_t = sigmoid(g_t w_K + c_K) from the
            neural word model's hidden features. Word-level evidence about the text being read, which neither the
            training counts nor the class-level contexts hold; the decoding state keeps W - 1 tokens. 0: none. Like the
            other neural_mixture_* fields, it acts only with neural_mixture_dim > 0 (the gates read its features).
        neural_mixture_cache_order (`int`, *optional*, defaults to 1):
            N in [1, neural_mixture_cache_window]: caches of orders 1 ... N over the window, each mixed in turn with its
            own gate [ours]: order n >= 2 predicts the tokens that followed the earlier occurrences of the last n - 1
            tokens in the window (order 2: what followed the pivot before; the bigram cache of Jelinek et al. 1991),
            the way a transformer's induction heads copy.
        neural_mixture_cache_weight (`float`, *optional*, defaults to 0.05):
            Each cache's kappa before training (c_K = logit of it, w_K = 0).
        freeze_embeddings (`bool`, *optional*, defaults to `True`):
            Keep the bit-cipher embeddings fixed during backprop.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the random initialisation of the dense layers.
        warm_started (`bool`, *optional*, defaults to `False`):
            Set by the explicit warm start, so it is not redone after reloading.
        warm_start_recipe ([`ExplicitWarmStartConfig`] or `dict`, *optional*):
            How the explicit warm start computes the weights (`hf_saffu.warm_start`); saved with the model, for
            the record, as the nested dict `warm_start_recipe` of config.json. Its fields may also be given as
            keyword arguments of `SaffuConfig` (`SaffuConfig(explicit_discount=None)`, the command line's flags,
            and the flat keys of config.json files saved before the recipe had its own object); they override
            the dict's. `None`: the recipe's defaults.
        bos_token_id (`int`, *optional*, defaults to `None`):
            Id of the beginning-of-sequence token.
        eos_token_id (`int`, *optional*, defaults to `None`):
            Id of the end-of-sequence token, which ends a document (the document context restarts after it).
        pad_token_id (`int`, *optional*, defaults to `None`):
            Id of the padding token.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Kept `False`: the SAFFU ties no weights (its head reads the hidden distributions, not the
            embeddings).

    Example:

    ```python
    >>> from hf_saffu import SaffuConfig, SaffuForCausalLM

    >>> # Initializing a configuration with this project's explicit warm start (the defaults)
    >>> configuration = SaffuConfig(vocab_size=4096, windows=[4, 16])

    >>> # Initializing a model (with random weights, before the warm start) from the configuration
    >>> model = SaffuForCausalLM(configuration)

    >>> # Accessing the model configuration
    >>> configuration = model.config

    >>> # The papers' forms of the same model
    >>> paper_configuration = SaffuConfig(vocab_size=4096, **SaffuConfig.PAPER_FORM)

    >>> # The warm start's recipe, one object (saved in config.json as the dict `warm_start_recipe`)
    >>> configuration.warm_start_recipe.explicit_discount
    0.75

    ```
    """

    PAPER_FORM = {
        "embedding_codes": "frequency_rank",
        "hidden_targets": "bit_cipher",
        "log_hidden_head": False,
        "pivot_head": False,
        "ngram_order": 1,
        "explicit_discount": None,
    }

    model_type = "saffu"

    def __init__(
        self,
        vocab_size: int = 8192,
        embed_bits: int = 128,
        hidden_bits: int = 96,
        windows: list[int] | tuple[int, ...] = (4, 16),
        use_document_context: bool = True,
        num_layers: int = 1,
        upper_layers: str = "head",
        log_hidden_head: bool = True,
        pivot_head: bool = False,
        ngram_order: int | None = None,
        ngram_capacities: list[int] | tuple[int, ...] | None = None,
        pivot_table_mb: float | None = DEFAULT_PIVOT_TABLE_MB,
        residual_rank: int = 0,
        neural_mixture_dim: int = 0,
        neural_mixture_weight: float = 0.05,
        neural_mixture_context: int = 2,
        neural_mixture_classes: int = 0,
        neural_mixture_attention_window: int = 0,
        neural_mixture_attention_dim: int = 128,
        neural_mixture_attention_heads: int = 4,
        neural_mixture_dropout: float = 0.0,
        neural_mixture_tied_output: bool = False,
        neural_mixture_aux_loss_coef: float = 0.0,
        neural_mixture_token_context: int = 0,
        neural_mixture_cache_window: int = 0,
        neural_mixture_cache_order: int = 1,
        neural_mixture_cache_weight: float = 0.05,
        freeze_embeddings: bool = True,
        initializer_range: float = 0.02,
        warm_started: bool = False,
        warm_start_recipe: "ExplicitWarmStartConfig | dict | None" = None,
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
        self.upper_layers = upper_layers
        self.log_hidden_head = log_hidden_head
        self.pivot_head = pivot_head
        legacy = (kwargs.pop("pivot_bigrams", None), kwargs.pop("pivot_trigrams", None))
        self.ngram_order, self.ngram_capacities = ngram_fields(ngram_order, ngram_capacities, pivot_head, *legacy)
        self.pivot_table_mb = pivot_table_mb
        self.residual_rank = residual_rank
        self.neural_mixture_dim = neural_mixture_dim
        self.neural_mixture_weight = neural_mixture_weight
        self.neural_mixture_context = neural_mixture_context
        self.neural_mixture_classes = neural_mixture_classes
        self.neural_mixture_attention_window = neural_mixture_attention_window
        self.neural_mixture_attention_dim = neural_mixture_attention_dim
        self.neural_mixture_attention_heads = neural_mixture_attention_heads
        self.neural_mixture_dropout = neural_mixture_dropout
        self.neural_mixture_tied_output = neural_mixture_tied_output
        self.neural_mixture_aux_loss_coef = neural_mixture_aux_loss_coef
        self.neural_mixture_token_context = neural_mixture_token_context
        self.neural_mixture_cache_window = neural_mixture_cache_window
        self.neural_mixture_cache_order = neural_mixture_cache_order
        self.neural_mixture_cache_weight = neural_mixture_cache_weight
        self.freeze_embeddings = freeze_embeddings
        self.initializer_range = initializer_range
        self.warm_started = warm_started
        self.warm_start_recipe = recipe_from(warm_start_recipe, kwargs)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_saffu()

    def to_dict(self) -> dict:
        """`PreTrainedConfig.to_dict`, with the warm start's recipe as a nested dict."""
        output = super().to_dict()
        output["warm_start_recipe"] = dataclasses.asdict(self.warm_start_recipe)
        return output

    @property
    def num_contexts(self) -> int:
        """C: the number of contexts whose hidden distributions every layer concatenates."""
        return len(self.windows) + int(self.use_document_context)

    @property
    def head_layer(self) -> int:
        """The index of the layer whose H_t the head (and the neural word model's direct path) reads: the last one, or
        the first with `upper_layers="neural"`."""
        return 0 if self.upper_layers == "neural" else self.num_layers - 1

    @property
    def table_orders(self) -> range:
        """The orders of the pivot's n-gram tables: 2 ... ngram_order (none below 2)."""
        return range(2, self.ngram_order + 1)

    @property
    def previous_token_count(self) -> int:
        """How many tokens before each position the model reads: the n-gram tables' histories (ngram_order - 2)
        and the neural mixture's v_{t-1}, ..., v_{t-k+1} (neural_mixture_context - 1) and attention window
        (neural_mixture_attention_window - 1) and cache (neural_mixture_cache_window - 1); the decoding state keeps
        as many."""
        windows = (self.neural_mixture_context, self.neural_mixture_attention_window, self.neural_mixture_cache_window)
        mixture = max(windows) - 1
        return max(self.ngram_order - 2, mixture if self.neural_mixture_dim else 0)

    def table_capacity(self, order: int) -> int:
        """Entries of the table of `order`: its ngram_capacities entry, at most one per n-gram (vocab_size^order)."""
        return min(self.ngram_capacities[order - 2], self.vocab_size**order)

    @property
    def max_window(self) -> int:
        """The longest window; the decoding state keeps max_window - 1 past inputs per layer."""
        return max(self.windows, default=1)

    def validate_saffu(self) -> None:
        """Raise a `ValueError` naming the first invalid field and its allowed range."""

        def at_most(name: str, value: int, bound: int, reason: str) -> None:
            if value > bound:
                raise ValueError(f"SaffuConfig.{name} must be <= {bound} ({reason}), got {value!r}")

        for name in BOOLEAN_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SaffuConfig.{name} must be true or false, got {getattr(self, name)!r}")
        positive_int("vocab_size", self.vocab_size)
        positive_int("num_layers", self.num_layers)
        at_most("num_layers", self.num_layers, MAX_NUM_LAYERS, "every layer reads all contexts of every token")
        if self.upper_layers not in UPPER_LAYERS:
            raise ValueError(f"SaffuConfig.upper_layers must be one of {UPPER_LAYERS}, got {self.upper_layers!r}")
        for name in ("embed_bits", "hidden_bits"):
            bits = getattr(self, name)
            positive_int(name, bits)
            at_most(name, bits, MAX_BITS, "the width of a bit-cipher code")
            if bits < self.vocab_size.bit_length():  # 2^bits - 1 < vocab_size
                needed = self.vocab_size.bit_length()
                raise ValueError(
                    f"SaffuConfig.{name}={bits} gives only 2^{bits} - 1 = {2**bits - 1} bit-cipher codes for "
                    f"vocab_size={self.vocab_size}; it must be >= {needed}"
                )
        if not isinstance(self.windows, list):
            raise ValueError(f"SaffuConfig.windows must be a list of integers >= 1, got {self.windows!r}")
        for index, k in enumerate(self.windows):
            positive_int(f"windows[{index}]", k)
            at_most(f"windows[{index}]", k, math.isqrt(MAX_TENSOR_ELEMENTS), "its attention matrix is windows^2")
        if len(set(self.windows)) != len(self.windows):
            raise ValueError(f"SaffuConfig.windows must not repeat a size, got {self.windows}")
        if self.num_contexts == 0:
            raise ValueError(
                "SaffuConfig needs at least one context: give windows (e.g. [4, 16]) or use_document_context=True"
            )
        check_matrix_sizes(self)
        if isinstance(self.residual_rank, bool) or not isinstance(self.residual_rank, int) or self.residual_rank < 0:
            raise ValueError(f"SaffuConfig.residual_rank must be an integer >= 0 (0: none), got {self.residual_rank!r}")
        dim = self.neural_mixture_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"SaffuConfig.neural_mixture_dim must be an integer >= 0 (0: none), got {dim!r}")
        if self.upper_layers == "neural" and self.num_layers > 1 and not dim:
            raise ValueError(
                'SaffuConfig.upper_layers="neural" feeds the layers above the first to the neural word model: it needs '
                "neural_mixture_dim > 0, got 0"
            )
        bounded_number("neural_mixture_weight", self.neural_mixture_weight, 0, 1)
        if self.neural_mixture_weight == 1:
            raise ValueError("SaffuConfig.neural_mixture_weight must be < 1 (the counts keep a share), got 1")
        context = self.neural_mixture_context
        if isinstance(context, bool) or not isinstance(context, int) or not 2 <= context <= MAX_MIXTURE_CONTEXT:
            raise ValueError(
                f"SaffuConfig.neural_mixture_context must be an integer in [2, {MAX_MIXTURE_CONTEXT}] (tokens read "
                f"in order, the pivot included), got {context!r}"
            )
        classes = self.neural_mixture_classes
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise ValueError(f"SaffuConfig.neural_mixture_classes must be an integer >= 0 (0: none), got {classes!r}")
        window = self.neural_mixture_attention_window
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= MAX_MIXTURE_CONTEXT:
            raise ValueError(
                f"SaffuConfig.neural_mixture_attention_window must be an integer in [0, {MAX_MIXTURE_CONTEXT}] (0: "
                f"none; tokens attended, the pivot included), got {window!r}"
            )
        positive_int("neural_mixture_attention_dim", self.neural_mixture_attention_dim)
        positive_int("neural_mixture_attention_heads", self.neural_mixture_attention_heads)
        if self.neural_mixture_attention_dim % self.neural_mixture_attention_heads:
            raise ValueError(
                f"SaffuConfig.neural_mixture_attention_dim={self.neural_mixture_attention_dim} must be a multiple of "
                f"neural_mixture_attention_heads={self.neural_mixture_attention_heads}"
            )
        bounded_number("neural_mixture_dropout", self.neural_mixture_dropout, 0, 1, closed=True)
        if self.neural_mixture_dropout == 1:
            raise ValueError("SaffuConfig.neural_mixture_dropout must be < 1 (1 drops every feature), got 1")
        bounded_number("neural_mixture_aux_loss_coef", self.neural_mixture_aux_loss_coef, 0, math.inf, closed=True)
        if self.neural_mixture_tied_output and self.neural_mixture_dim and not window:
            raise ValueError(
                "SaffuConfig.neural_mixture_tied_output ties W to the attention's token embeddings: it needs "
                "neural_mixture_attention_window > 0, got 0"
            )
        ordered = self.neural_mixture_token_context
        if isinstance(ordered, bool) or not isinstance(ordered, int) or not 0 <= ordered <= window:
            raise ValueError(
                f"SaffuConfig.neural_mixture_token_context must be an integer in [0, neural_mixture_attention_window="
                f"{window}] (the tokens whose learned embeddings the neural word model reads in order), got {ordered!r}"
            )
        cache = self.neural_mixture_cache_window
        if isinstance(cache, bool) or not isinstance(cache, int) or not 0 <= cache <= MAX_CACHE_WINDOW:
            raise ValueError(
                f"SaffuConfig.neural_mixture_cache_window must be an integer in [0, {MAX_CACHE_WINDOW}] (0: none; "
                f"tokens the cache reads, the pivot included), got {cache!r}"
            )
        order = self.neural_mixture_cache_order
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= max(cache, 1):
            raise ValueError(
                f"SaffuConfig.neural_mixture_cache_order must be an integer in [1, neural_mixture_cache_window="
                f"{cache}] (caches of orders 1 ... N), got {order!r}"
            )
        bounded_number("neural_mixture_cache_weight", self.neural_mixture_cache_weight, 0, 1)
        if self.neural_mixture_cache_weight == 1:
            raise ValueError("SaffuConfig.neural_mixture_cache_weight must be < 1 (the mixture keeps a share), got 1")
        check_ngram_fields(self)
        if self.pivot_table_mb is not None:
            bounded_number("pivot_table_mb", self.pivot_table_mb, 0, math.inf, "or None: fixed table sizes")
        bounded_number("initializer_range", self.initializer_range, 0, math.inf)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(self, name, None)
            if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < self.vocab_size):
                raise ValueError(
                    f"SaffuConfig.{name} must be a token id in [0, vocab_size={self.vocab_size}), got {token_id!r}"
                )


def ngram_fields(order, capacities, pivot_head: bool, bigrams=None, trigrams=None) -> tuple:
    """(ngram_order, ngram_capacities) from the fields as given: `bigrams` and `trigrams` are the capacities of
    orders 2 and 3 under their earlier names (`pivot_bigrams`, `pivot_trigrams`; 0: no table of that order),
    which set the order when `order` is None (3 by default; 1 with `pivot_head`)."""
    if bigrams == 0 and trigrams:
        raise ValueError(
            f"SaffuConfig.pivot_trigrams needs the bigram table it corrects (pivot_bigrams > 0), got pivot_trigrams="
            f"{trigrams} and pivot_bigrams=0 (or set ngram_order, the tables' order)"
        )
    if order is None:
        order = 1 if pivot_head else DEFAULT_NGRAM_ORDER
        if bigrams is not None or trigrams is not None:
            order = 1 if bigrams == 0 or (bigrams is None and pivot_head) else 2 if trigrams == 0 else 3
    if isinstance(order, int) and not isinstance(order, bool) and capacities is None and order >= 2:
        capacities = [DEFAULT_PIVOT_BIGRAMS] + [DEFAULT_PIVOT_TRIGRAMS] * (order - 2)
        for index, given in enumerate((bigrams, trigrams)):
            if given and index < len(capacities):
                capacities[index] = given
    return order, list(capacities) if isinstance(
        capacities, (list, tuple)
    ) else [] if capacities is None else capacities


def check_ngram_fields(config: SaffuConfig) -> None:
    """ngram_order: an integer >= 0, whose n-gram keys fit int64, not with pivot_head; ngram_capacities: one integer
    >= 1 per table (orders 2 ... ngram_order), each table at most MAX_TENSOR_ELEMENTS entries."""
    order, capacities = config.ngram_order, config.ngram_capacities
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"SaffuConfig.ngram_order must be an integer >= 0 (0 or 1: no n-gram tables), got {order!r}")
    if config.vocab_size**order >= MAX_NGRAM_KEY:
        largest = max(n for n in range(order) if config.vocab_size**n < MAX_NGRAM_KEY)
        raise ValueError(
            f"SaffuConfig.ngram_order={order} keys n-grams as vocab_size^{order} = {config.vocab_size}^{order} >= 2^63 "
            f"integers, past int64: with vocab_size={config.vocab_size} it must be <= {largest}"
        )
    if config.pivot_head and order >= 2:
        raise ValueError(
            "SaffuConfig.pivot_head and SaffuConfig.ngram_order are two forms of the pivot's channel; set one "
            f"(pivot_head=true with ngram_order=1), got pivot_head=true and ngram_order={order}"
        )
    tables = max(order - 1, 0)
    if not isinstance(capacities, list) or len(capacities) != tables:
        raise ValueError(
            f"SaffuConfig.ngram_capacities must list {tables} table sizes (orders 2 ... ngram_order={order}), got "
            f"{capacities!r}"
        )
    for index, capacity in enumerate(capacities):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(
                f"SaffuConfig.ngram_capacities[{index}] (the order-{index + 2} table) must be an integer >= 1, got "
                f"{capacity!r} (for no table of that order, lower ngram_order)"
            )
        if config.table_capacity(index + 2) > MAX_TENSOR_ELEMENTS:
            raise ValueError(
                f"SaffuConfig.ngram_capacities[{index}] must be <= {MAX_TENSOR_ELEMENTS} (entries of the order-"
                f"{index + 2} table), got {capacity}"
            )


def check_matrix_sizes(config: SaffuConfig) -> None:
    """The largest matrices, vocab_size x embed_bits (embeddings), vocab_size x C * hidden_bits (the head) and,
    from the second layer on, hidden_bits x C * hidden_bits, must hold at most `MAX_TENSOR_ELEMENTS` entries."""
    concatenated = config.num_contexts * config.hidden_bits
    matrices = [("vocab_size", "embed_bits", config.embed_bits), ("vocab_size", "C x hidden_bits", concatenated)]
    if config.num_layers > 1:
        matrices.append(("hidden_bits", "C x hidden_bits", concatenated))
    for rows, columns, width in matrices:
        height = getattr(config, rows)
        if height * width > MAX_TENSOR_ELEMENTS:
            raise ValueError(
                f"SaffuConfig.{rows} x {columns} (C = {config.num_contexts} contexts) = {height} x {width} must be "
                f"<= {MAX_TENSOR_ELEMENTS} entries (a matrix that large cannot be allocated)"
            )


def positive_int(name: str, value, note: str = "") -> None:
    """Raise a `ValueError` naming SaffuConfig.`name` unless `value` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SaffuConfig.{name} must be an integer >= 1{f' ({note})' if note else ''}, got {value!r}")


def non_negative_int(name: str, value) -> None:
    """Raise a `ValueError` naming SaffuConfig.`name` unless `value` is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"SaffuConfig.{name} must be an integer >= 0, got {value!r}")


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


__all__ = ["ExplicitWarmStartConfig", "SaffuConfig"]
