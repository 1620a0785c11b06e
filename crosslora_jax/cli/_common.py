"""What every entry point shares: flags derived from option types, one-line errors with exit 2,
and prompt clean-up on SIGTERM."""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import signal
import sys
import time
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple, NoReturn, TypeVar

from absl import flags, logging

from crosslora_jax import _interrupt, _options
from crosslora_jax._errors import CrossLoraError, OptionsError

EXIT_BAD_INPUT = 2
T = TypeVar("T")


def define_flags_from(
    options_type: type[T],
    module: str,
    *,
    only: Collection[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> Callable[[], T]:
    """One absl flag per option field of the dataclass `options_type`, and the function that builds
    an `options_type` from the parsed flags (bad values raise `OptionsError` there: exit 2).

    Name, default, help and allowed values (an enum flag) come from the field (`_options.option`);
    a field holding another options dataclass contributes that one's fields (a `_options.nested`
    field only those it names). `module` (the
    command's `__name__`) owns the flags, so its `--help` lists them. `only` keeps these flag
    names; `defaults` replaces a flag's default (by flag name) for this command.
    """
    defaults = dict(defaults or {})
    names: set[str] = set()
    build = _define(options_type, module, only, defaults, flag_values, names, None)
    unknown = (set(only or ()) | set(defaults)) - names
    if unknown:  # a typo here would otherwise drop a flag without a word
        raise ValueError(f"{options_type.__name__} has no options {sorted(unknown)}")
    return build


def _define(
    cls: type[T],
    module: str,
    only: Collection[str] | None,
    defaults: Mapping[str, Any],
    flag_values: flags.FlagValues,
    names: set[str],
    fields: Collection[str] | None,
) -> Callable[[], T]:
    parts: dict[str, Callable[[], Any]] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if fields is not None and field.name not in fields:
            continue  # not an option of the holder: the field keeps its default
        hint = _options.field_types(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            nested = _options.nested_flags(field)
            parts[field.name] = _define(hint, module, only, defaults, flag_values, names, nested)  # type: ignore[arg-type]
            continue
        meta = _options.option_of(field)
        name = _options.flag_name(field)
        if meta is None:
            continue
        names.add(name)
        if only is not None and name not in only:
            continue
        default = defaults.get(name, field.default)
        choices = meta.flag_choices or _options.allowed_values(cls, field)
        kind = _flag_type(hint)
        common = {"flag_values": flag_values, "module_name": module}
        if choices is not None:
            holder = flags.DEFINE_enum(name, default, list(choices), meta.help, **common)
        elif kind is bool:
            holder = flags.DEFINE_bool(name, default, meta.help, **common)
        elif kind is int:
            holder = flags.DEFINE_integer(name, default, meta.help, **common)
        elif kind is float:
            holder = flags.DEFINE_float(name, default, meta.help, **common)
        else:
            holder = flags.DEFINE_string(name, default, meta.help, **common)
        parts[field.name] = lambda holder=holder: holder.value
    return lambda: cls(**{name: value() for name, value in parts.items()})


class RunFlags(NamedTuple):
    """The flags of a command that reads two models and writes adapters: folders, caches."""

    source_model: flags.FlagHolder
    target_model: flags.FlagHolder
    adapter: flags.FlagHolder  # a string, or a list of them where the command takes several
    output: flags.FlagHolder
    overwrite: flags.FlagHolder
    cache_dir: flags.FlagHolder
    compilation_cache: flags.FlagHolder

    def check(self) -> None:
        """`OptionsError` naming a required flag left unset."""
        for holder in (self.source_model, self.target_model, self.adapter, self.output):
            if not holder.value:
                raise OptionsError(f"--{holder.name}", "is required")

    def enable_compilation_cache(self) -> None:
        if self.compilation_cache.value:
            from crosslora_jax._xla_cache import enable_compilation_cache  # imports jax: after flag errors

            enable_compilation_cache(self.cache_dir.value or None)

    def run_job(self, job: Callable[..., T], options: Any) -> tuple[T, float]:
        """`job(source, target, adapter, output, options, overwrite=, cache_dir=, progress=)` (the
        signature of `transfer` and `distill`) on these flags, the compilation cache turned on
        first, progress on stderr from process 0; its result and its wall seconds."""
        import jax  # after flag errors, as above

        from crosslora_jax._progress import Progress

        self.enable_compilation_cache()
        started = time.perf_counter()
        result = job(
            self.source_model.value,
            self.target_model.value,
            self.adapter.value,
            self.output.value,
            options,
            overwrite=self.overwrite.value,
            cache_dir=self.cache_dir.value,
            progress=Progress.to_stderr() if jax.process_index() == 0 else None,
        )
        return result, time.perf_counter() - started


def define_run_flags(
    module: str, *, source: str, target: str, adapter: str, output: str, cache_dir: str, several_adapters: bool = False
) -> RunFlags:
    """--source_model, --target_model, --adapter (repeatable with `several_adapters`), --output,
    --overwrite, --cache_dir and --compilation_cache, owned by `module`, with the command's own
    help for the first four and for --cache_dir."""
    common = {"module_name": module}
    define_adapter = flags.DEFINE_multi_string if several_adapters else flags.DEFINE_string
    return RunFlags(
        flags.DEFINE_string("source_model", None, source, **common),
        flags.DEFINE_string("target_model", None, target, **common),
        define_adapter("adapter", None, adapter, **common),
        flags.DEFINE_string("output", None, output, **common),
        flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output.", **common),
        flags.DEFINE_string("cache_dir", None, cache_dir, **common),
        flags.DEFINE_bool(
            "compilation_cache",
            True,
            "Keep compiled XLA programs between runs (under --cache_dir/xla, else ~/.cache/crosslora_jax/xla).",
            **common,
        ),
    )


def define_distributed_flags(module: str) -> Callable[[], None]:
    """`--distributed` and its three explicit settings, owned by `module`; returns the function that
    checks them (`OptionsError`) and joins the processes (`jax.distributed.initialize`), to be
    called before any JAX computation."""
    common = {"module_name": module}
    distributed = flags.DEFINE_bool(
        "distributed", False, "Run as one process of several: jax.distributed (auto-detected on TPU pods/SLURM).",
        **common,
    )  # fmt: skip
    coordinator = flags.DEFINE_string(
        "coordinator_address", None, "With --distributed: host:port of process 0.", **common
    )
    num_processes = flags.DEFINE_integer("num_processes", None, "With --distributed: total process count.", **common)
    process_id = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.", **common)

    def start() -> None:
        explicit = [coordinator.value, num_processes.value, process_id.value]
        if any(v is not None for v in explicit) and not distributed.value:
            raise OptionsError("--coordinator_address/--num_processes/--process_id", "need --distributed")
        if distributed.value:
            import jax  # only here: --help and flag errors stay quick

            jax.distributed.initialize(coordinator.value, num_processes.value, process_id.value)

    return start


def _flag_type(hint: Any) -> Any:
    """`int` for `int` and `int | None` (an unset optional number is the flag's None default)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _raise_interrupt(signum: int, frame: object) -> NoReturn:  # noqa: ARG001
    _interrupt.request_stop(signum)  # in case a library call swallows the KeyboardInterrupt
    raise KeyboardInterrupt(f"signal {signum}")


class _QuietOrbax(std_logging.Filter):
    """orbax logs several INFO lines per checkpoint through absl; keep only its warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


class _QuietPlatformProbe(std_logging.Filter):
    """jax logs (INFO) every platform it probes and cannot load: "Unable to initialize backend
    'tpu'" on any machine without a TPU. Nothing for a user to act on (jax warns separately when
    an accelerator is present but unusable), so it is dropped unless --verbosity asks for debug
    output. Platform selection is untouched: a TPU VM still loads its TPU."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        probe = (
            record.levelno < std_logging.WARNING
            and record.name.startswith("jax")
            and str(record.msg).startswith("Unable to initialize backend")
        )
        return not probe or logging.level_debug()


_HELP_ARGS = frozenset({"--help", "-help", "--helpshort", "-helpshort", "-h", "-?"})


def flags_parser(module: str, usage: str) -> Callable[[list[str]], list[str]]:
    """absl's parser for the command whose flags `module` defines, with two changes:

    `--help` prints `usage` and that module's own flags and exits 0 (absl's lists the flags of
    `__main__`, which for `python -m` is a shim with none, and exits 1); a bad flag is a one-line
    `error:` and exit 2 like any bad input. `--helpfull` stays absl's (every library's flags).
    """

    def parse(argv: list[str]) -> list[str]:
        if any(arg in _HELP_ARGS for arg in argv[1:]):
            text = f"{usage.strip()}\n\nFlags:{flags.FLAGS.module_help(module).split(':', 1)[1]}"
            try:
                print(f"{text}\n\n  --helpfull lists absl's, JAX's and orbax's flags as well.", flush=True)
            except BrokenPipeError:  # `--help | head`: the reader has all it wants
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return parse


def quiet_logging_by_default() -> None:
    """At the default verbosity stderr keeps warnings and errors (and the progress lines, which do
    not go through logging); `--verbosity=0` (or `-v 0`) brings back absl's INFO lines."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run_guarded(body: Callable[[], None]) -> None:
    """Run `body`; bad input becomes `error: ...` on stderr and exit 2, a signal 128 + its number.

    SIGTERM is turned into KeyboardInterrupt so the staging folder's clean-up runs.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    logging.get_absl_handler().addFilter(_QuietOrbax())
    logging.get_absl_handler().addFilter(_QuietPlatformProbe())
    quiet_logging_by_default()
    try:
        body()
    except CrossLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        logging.warning("interrupted; temporary output removed")
        print("error: interrupted", file=sys.stderr)
        sys.exit(_interrupt.exit_status())
