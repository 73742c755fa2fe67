#!/usr/bin/env python3
"""Checks that the module import graph of src/ has no cycle (a parent and its own children
excepted): an edge A -> B for every `crate::B...` or `super::...` path a module's code names,
outside comments and test modules. Exits 1 and prints each cycle when there is one.

Hand-rolled because `cargo modules dependencies --acyclic` needs a newer rustc than the
project's toolchain; this reads paths, not types, which is enough for a layering rule.
Run from the repository root (.ci/run does)."""
import os,re,sys
def modpath(p):
    rel=p[len('src/'):-3].split('/')
    if rel[-1] in ('mod','lib','main'): rel=rel[:-1]
    return tuple(rel)
mods={}
for root,_,fs in os.walk('src'):
    for f in fs:
        if f.endswith('.rs') and f!='main.rs': mods[modpath(os.path.join(root,f))]=os.path.join(root,f)
known=set(mods)
def resolve(path):
    # longest known prefix
    for n in range(len(path),0,-1):
        if path[:n] in known: return path[:n]
    return None
edges={m:set() for m in known}
for m,p in mods.items():
    text=open(p).read()
    cut=re.search(r'^#\[cfg\(test\)\]\s*\nmod tests', text, re.M)
    if cut: text=text[:cut.start()]
    text=re.sub(r"//[^\n]*","",text)
    if p.endswith("/tests.rs"): continue
    for mo in re.finditer(r'\b(crate|super)((?:::\w+)+)', text):
        parts=mo.group(2).strip(':').split('::')
        if mo.group(1)=='crate': base=()
        else:
            base=m[:-1] if not p.endswith('mod.rs') else m[:-1]
            # super from a file module a/b.rs (module a::b) is a; from a/b/mod.rs (a::b) is a
        target=resolve(base+tuple(parts))
        if target and target!=m and not (target==m[:len(target)]) and not (m==target[:len(m)]):
            edges[m].add(target)
# cycles via DFS
sys.setrecursionlimit(10000)
color={}; stack=[]; cycles=[]
def dfs(u):
    color[u]=1; stack.append(u)
    for v in edges[u]:
        if color.get(v)==1: cycles.append(stack[stack.index(v):]+[v])
        elif not color.get(v): dfs(v)
    stack.pop(); color[u]=2
for m in sorted(known): 
    if not color.get(m): dfs(m)
print(len(known),"modules,",sum(len(e) for e in edges.values()),"edges")
for c in cycles: print("cycle:"," -> ".join("::".join(x) or "crate" for x in c))
print("module graph: no cycles" if not cycles else f"module graph: {len(cycles)} cycles")
sys.exit(1 if cycles else 0)
