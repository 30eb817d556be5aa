"""The package's import structure: no cycles, and the core never reaches up into command code."""
import ast
import os
from os import path as osp

import pytest
from conftest import REPO_ROOT

PACKAGE = 'wbsr_plugin'
# Command modules: ``python -m wbsr_plugin.X`` and the console scripts.
COMMANDS = {'train', 'test', 'subnets', 'prepare', 'infer', 'curve', 'fit_prior', 'export', 'demo', 'reproduce'}
# What each package may import of the package (besides itself); README.md, "Layout", says the same.
MAY_IMPORT = {
    'wbsr_plugin.utils': set(),
    'wbsr_plugin.archs': {'utils'},
    'wbsr_plugin.data': {'utils'},
    'wbsr_plugin.losses': {'utils', 'data'},
    'wbsr_plugin.inference': {'utils', 'archs', 'data'},
    'wbsr_plugin.models': {'utils', 'archs', 'data', 'losses', 'inference'},
    'wbsr_plugin.baselines': {'utils', 'archs', 'data', 'inference'},
    'wbsr_plugin.cli': {'utils', 'archs', 'data', 'losses', 'inference'},
    'wbsr_plugin.reproduce_util': {'utils', 'archs', 'data', 'losses', 'inference', 'models', 'baselines', 'cli'},
}
# Packages that never exit the process: everything but the commands and their plumbing.
CORE = ('wbsr_plugin.utils', 'wbsr_plugin.archs', 'wbsr_plugin.data', 'wbsr_plugin.losses', 'wbsr_plugin.inference',
        'wbsr_plugin.models', 'wbsr_plugin.baselines')


def package_modules():
    """{module name: source path} of every module of the package."""
    root = osp.join(REPO_ROOT, PACKAGE)
    modules = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if file.endswith('.py'):
                parts = osp.relpath(osp.join(folder, file), REPO_ROOT)[:-3].split(os.sep)
                if parts[-1] == '__init__':
                    parts = parts[:-1]
                modules['.'.join(parts)] = osp.join(folder, file)
    return modules


def imported_modules(name, path, known):
    """The package's modules that ``name`` imports anywhere in its source (functions included)."""
    is_package = path.endswith('__init__.py')
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = name.split('.')
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            targets = [base] + [f'{base}.{alias.name}' for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph():
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def within(name, prefixes):
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def test_the_walk_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert 'wbsr_plugin.utils.compat' in graph['wbsr_plugin']  # from .utils import compat
    assert 'wbsr_plugin.archs.supernet_util' in graph['wbsr_plugin.archs.wbsr_resnet_arch']  # from .supernet_util
    assert 'wbsr_plugin.inference.checkpoint' in graph['wbsr_plugin.infer']  # absolute


def test_no_import_cycles():
    graph = import_graph()
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                pytest.fail('import cycle: ' + ' -> '.join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def package_of(module):
    parts = module.split('.')
    return '.'.join(parts[:2]) if len(parts) > 2 or module in MAY_IMPORT else None


def forbidden_imports(graph):
    """``(module, imported)`` pairs that break MAY_IMPORT."""
    found = []
    for module, targets in graph.items():
        package = package_of(module)
        if package is None:
            continue  # the package's __init__ and the command modules
        allowed = {f'{PACKAGE}.{p}' for p in MAY_IMPORT[package]} | {package}
        found += [(module, t) for t in sorted(targets) if package_of(t) not in allowed]
    return found


def test_every_package_imports_only_what_it_may():
    graph = import_graph()
    assert {f'{PACKAGE}.{c}' for c in COMMANDS} <= set(graph), 'a command module is missing'
    assert {package_of(m) for m in graph} - {None} == set(MAY_IMPORT), 'a package is not in MAY_IMPORT'
    assert forbidden_imports(graph) == []


def test_the_walk_sees_forbidden_imports():
    graph = import_graph()
    graph['wbsr_plugin.data.difficulty'].add('wbsr_plugin.cli.image_io')  # the core reaching up into plumbing
    graph['wbsr_plugin.inference.engine'].add('wbsr_plugin.infer')  # the core importing a command
    assert sorted(forbidden_imports(graph)) == [('wbsr_plugin.data.difficulty', 'wbsr_plugin.cli.image_io'),
                                                ('wbsr_plugin.inference.engine', 'wbsr_plugin.infer')]


def test_the_core_never_exits_the_process():
    modules = package_modules()
    offending = []
    for name, path in modules.items():
        if within(name, CORE):
            source = open(path, encoding='utf-8').read()
            if 'SystemExit' in source or 'sys.exit' in source:
                offending.append(name)
    assert offending == []


RUNTIME_ROOT = osp.join(REPO_ROOT, 'runtime', 'wbsr_runtime')
RUNTIME_MAY_IMPORT = {'numpy', 'cv2', 'onnxruntime', 'openvino'}  # besides the standard library and itself


def test_the_torch_free_runtime_imports_neither_torch_nor_the_plugin():
    import sys
    found = {}
    for file in sorted(os.listdir(RUNTIME_ROOT)):
        if not file.endswith('.py'):
            continue
        for node in ast.walk(ast.parse(open(osp.join(RUNTIME_ROOT, file), encoding='utf-8').read())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {node.module.split('.')[0]}
            else:
                continue
            outside = roots - RUNTIME_MAY_IMPORT - set(sys.stdlib_module_names) - {'wbsr_runtime'}
            if outside:
                found[file] = sorted(outside)
    assert not found
