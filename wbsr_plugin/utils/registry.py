"""Registration into BasicSR's registries that survives re-imports.

BasicSR's ``Registry`` asserts that a name is registered once. Importing a module
a second time (``importlib.reload``, ``python -m`` on a module that the package
already imported) would re-run its ``@REGISTRY.register()`` decorators. The
decorator below replaces an earlier registration of the same class from the
same module and still refuses a different object under a taken name.
"""


def _same_definition(old, new):
    modules = {old.__module__, new.__module__}
    return old.__qualname__ == new.__qualname__ and (len(modules) == 1 or '__main__' in modules)


def register(registry):
    """Class decorator: ``@register(ARCH_REGISTRY)``.

    Args:
        registry (basicsr.utils.registry.Registry): The registry to add to.
    """

    def decorator(obj):
        old = registry._obj_map.get(obj.__name__)
        if old is not None and not _same_definition(old, obj):
            raise KeyError(f"'{obj.__name__}' is already registered in BasicSR's {registry._name} registry "
                           f'by {old.__module__}; rename one of them.')
        registry._obj_map[obj.__name__] = obj
        return obj

    return decorator
