"""Discovery of components through pluggy: built-ins from a fixed list, third parties by entry point.

``Registry.load()`` registers the built-in plugin modules, then every module named in the entry-point
group ``diffratio``. A plugin that fails to import, or whose registration hook raises, is recorded in
``Registry.failures`` and reported; the others still load. Two components of one kind with one name
fail, naming both providers.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pluggy

from diffratio.components import Logger
from diffratio.errors import PluginError
from diffratio.hooks import LIFECYCLE_HOOKS, PROJECT, REGISTRATION_HOOKS, ComponentSpec, Hookspecs
from diffratio.kinds import KINDS
from diffratio.signals import is_real_interrupt

#: Built-in plugin modules, registered in this order before any third-party plugin.
BUILTIN_PLUGINS: tuple[str, ...] = ("diffratio_builtins",)
ENTRY_POINT_GROUP = "diffratio"


@attrs.frozen
class Provider:
    """Where a component comes from: the plugin's registered name and its distribution."""

    plugin: str
    package: str
    version: str


@attrs.frozen
class Registered:
    spec: ComponentSpec
    provider: Provider


@attrs.frozen
class PluginFailure:
    plugin: str
    package: str
    error: str


class UnknownComponentError(PluginError):
    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        listed = ", ".join(choices) if choices else "none registered"
        super().__init__(f"unknown {kind} {name!r} (choices: {listed})")


def _dist_version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager; a run's loggers (``diffratio.Logger`` objects) take part in the lifecycle hooks with
    plain ``diffratio_on_*`` methods, without the ``hookimpl`` marker (as pytest accepts unmarked ``pytest_``
    functions)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and isinstance(plugin, Logger) and name in LIFECYCLE_HOOKS:
            opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False, "tryfirst": False,
                    "trylast": False, "specname": None}
        return opts


class Registry:
    """Holds the plugin manager and every registered component, by kind and name.

    Lifecycle events are pluggy hook calls (``registry.pm.hook.diffratio_on_step_end(run=..., ...)``), so an
    implementation declares any subset of the hook's arguments. Each lifecycle implementation is isolated
    when registered: an exception in it is reported once (plugin and package named) and the run goes on.
    """

    def __init__(self) -> None:
        self.pm = PluginManager(PROJECT)
        self.pm.add_hookspecs(Hookspecs)
        self.components: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.failures: list[PluginFailure] = []
        self._providers: dict[str, Provider] = {}
        self._reported: set[tuple[str, str]] = set()
        self._loaded = False

    # ---- loading ----

    def load(self, *, builtins: bool = True, entry_points: bool = True) -> Registry:
        """Register built-ins and third-party plugins, then collect their components (once)."""
        if self._loaded:
            return self
        if builtins:
            version = _dist_version("diffratio")
            for modname in BUILTIN_PLUGINS:
                module = importlib.import_module(modname)
                self.register(module, Provider(modname, "diffratio", version))
        if entry_points:
            self._load_entry_points()
        self.pm.check_pending()
        self._collect()
        self._loaded = True
        for f in self.failures:
            warnings.warn(f"diffratio plugin {f.plugin!r} from package {f.package!r} failed and is "
                          f"skipped: {f.error}", stacklevel=2)
        return self

    def register(self, plugin: Any, provider: Provider) -> None:
        """Register one plugin object or module; its lifecycle hook implementations are isolated."""
        self.pm.register(plugin, name=provider.plugin)
        self._providers[provider.plugin] = provider
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.name in LIFECYCLE_HOOKS:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        impl.function = self._isolated(provider, caller.name, impl.function)

    def unregister(self, plugin: Any) -> None:
        self.pm.unregister(plugin)

    @contextmanager
    def attached(self, loggers: Iterable[Logger]) -> Iterator[None]:
        """Register a run's loggers for its lifecycle events, and unregister them after."""
        attached = []
        try:
            for lg in loggers:
                name = type(lg).registered_name or type(lg).__name__
                entry = self.components["logger"].get(name)
                prov = entry.provider if entry is not None else Provider(name, "unknown", "?")
                self.register(lg, Provider(f"logger {name} ({id(lg):x})", prov.package, prov.version))
                attached.append(lg)
            yield
        finally:
            for lg in attached:
                self.pm.unregister(lg)

    def _isolated(self, provider: Provider, hook: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:  # pluggy passes the arguments the implementation declares, in order
            try:
                return fn(*args)
            except Exception as exc:
                if (provider.plugin, hook) not in self._reported:
                    self._reported.add((provider.plugin, hook))
                    warnings.warn(f"plugin {provider.plugin!r} (package {provider.package}) raised in {hook}: "
                                  f"{type(exc).__name__}: {exc}; the run goes on (further errors of this hook "
                                  "are not reported)", stacklevel=2)
                return None

        return call

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:  # SystemExit too: a broken plugin must not take the others down
                if is_real_interrupt(exc):
                    raise
                self.failures.append(PluginFailure(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}"))
                continue
            try:
                self.register(plugin, Provider(ep.name, dist, version))
            except Exception as exc:
                self.failures.append(PluginFailure(ep.name, dist, f"registration failed: {exc}"))

    def _collect(self) -> None:
        """Components of every plugin; a plugin whose registration hook raises adds none and is unregistered."""
        found: list[tuple[str, ComponentSpec]] = []
        failed: dict[str, str] = {}
        for kind, hook_name in REGISTRATION_HOOKS.items():
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):  # registration order
                try:
                    specs = list(impl.function() or ())
                    for spec in specs:
                        self._check_spec(spec, kind)
                except PluginError:
                    raise
                except Exception as exc:
                    failed.setdefault(impl.plugin_name, f"{hook_name}() raised {type(exc).__name__}: {exc}")
                    continue
                found += [(impl.plugin_name, spec) for spec in specs]
        for name, error in failed.items():
            provider = self._providers.get(name, Provider(name, "unknown", "?"))
            self.failures.append(PluginFailure(provider.plugin, provider.package, error))
            self.pm.unregister(name=name)
        for name, spec in found:
            if name not in failed:
                self._add(spec, self._providers.get(name, Provider(name, "unknown", "?")))
    @staticmethod
    def _check_spec(spec: Any, kind: str) -> None:
        if not isinstance(spec, ComponentSpec):
            raise TypeError(f"expected ComponentSpec records, got {type(spec).__name__}")
        if spec.kind != kind:
            raise TypeError(f"{spec.name!r} is a {spec.kind} spec returned from the {kind} hook")
        base = KINDS[kind]
        if not (isinstance(spec.cls, type) and issubclass(spec.cls, base)):
            raise TypeError(f"{kind} {spec.name!r}: class {spec.cls!r} does not derive from "
                            f"diffratio.{base.__name__}")
        if not attrs.has(spec.cls.Config):
            raise TypeError(f"{kind} {spec.name!r}: {spec.cls.__name__}.Config is not an attrs class")

    def _add(self, spec: ComponentSpec, provider: Provider) -> None:
        existing = self.components[spec.kind].get(spec.name)
        if existing is not None:
            raise PluginError(
                f"{spec.kind} {spec.name!r} is registered twice: by plugin {existing.provider.plugin!r} "
                f"(package {existing.provider.package}) and by plugin {provider.plugin!r} (package "
                f"{provider.package}); uninstall one or rename its component")
        spec.cls.registered_name = spec.name
        self.components[spec.kind][spec.name] = Registered(spec, provider)

    # ---- queries ----

    def get(self, kind: str, name: str) -> ComponentSpec:
        return self.entry(kind, name).spec

    def entry(self, kind: str, name: str) -> Registered:
        if kind not in self.components:
            raise PluginError(f"unknown component kind {kind!r} (kinds: {', '.join(self.components)})")
        try:
            return self.components[kind][name]
        except KeyError:
            raise UnknownComponentError(kind, name, self.components[kind]) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry with built-ins and installed plugins, loaded on first use."""
    global _default
    if _default is None:
        _default = Registry().load()
    return _default
