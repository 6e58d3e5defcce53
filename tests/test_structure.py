"""The package imports one way: no import circle anywhere in vaes/, the data layer
imports neither models nor the engine, and the registry imports no family."""

import ast
import os

from tests.helpers import REPO


def _imports():
  """module -> set of vaes modules it imports (anywhere in the file)."""
  mods = {}
  root = os.path.join(REPO, 'vaes')
  for dirpath, _, files in os.walk(root):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(dirpath, f)
        name = os.path.relpath(path[:-3], REPO).replace(os.sep, '.')
        name = name[:-len('.__init__')] if name.endswith('.__init__') else name
        mods[name] = ast.parse(open(path, encoding='utf-8').read())
  graph = {}
  for name, tree in mods.items():
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = {f'{node.module}.{a.name}' for a in node.names} & set(mods)
        deps |= subs or {node.module}
    graph[name] = {d for d in deps if d in mods and d != name}
  return graph


def _cycles(graph):
  state, found = {}, []

  def visit(u, path):
    state[u] = 1
    for v in sorted(graph[u]):
      if state.get(v) == 1:
        found.append(path[path.index(v):] + [v])
      elif not state.get(v):
        visit(v, path + [v])
    state[u] = 2
  for m in sorted(graph):
    if not state.get(m):
      visit(m, [m])
  return found


def test_no_import_circle_in_vaes():
  graph = _imports()
  assert 'vaes.train' in graph and 'vaes.data.codes' in graph   # the parse saw the package
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [['a', 'b', 'c', 'a']]


def test_layers_import_downwards():
  graph = _imports()
  for module, deps in graph.items():
    if module.startswith('vaes.data'):   # vaes.fs: the file-system layer, a leaf
      bad = {d for d in deps if not d.startswith('vaes.data') and d != 'vaes.fs'}
      assert not bad, f'{module} imports {bad}'
    if module.startswith('vaes.models'):
      assert not {d for d in deps if d.split('.')[1] in ('train', 'families', 'data', 'stages')}
  assert not {d for d in graph['vaes.registry'] if d.startswith('vaes.families')}
  assert not graph['vaes.fs']
