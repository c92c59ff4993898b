# TEMPORARY experiment (deleted after use): compiled per-chunk selective scan vs eager.
import math, sys, time, torch
from selectivbench.models.mamba import chunk_selective_scan, naive_selective_scan

def fwd_chunk(h, delta_c, du_c, B_c, C_c, At):
    ys = []
    for i in range(delta_c.shape[1]):
        h = torch.exp(delta_c[:, i, None, :] * At) * h + B_c[:, i, :, None] * du_c[:, i, None, :]
        ys.append((C_c[:, i, :, None] * h).sum(1))
    return torch.stack(ys, 1), h

def bwd_chunk(h0, g, decay_next, delta_c, du_c, B_c, C_c, dy_c, At):
    hs, h = [], h0
    n = delta_c.shape[1]
    for i in range(n):
        h = torch.exp(delta_c[:, i, None, :] * At) * h + B_c[:, i, :, None] * du_c[:, i, None, :]
        hs.append(h)
    gB, dB, dC, dq = [None] * n, [None] * n, [None] * n, [None] * n
    dAt = torch.zeros_like(h0)
    for i in reversed(range(n)):
        a = torch.exp(delta_c[:, i, None, :] * At)
        g = g * decay_next + C_c[:, i, :, None] * dy_c[:, i, None, :]
        gB[i] = (B_c[:, i, :, None] * g).sum(1)
        dB[i] = (g * du_c[:, i, None, :]).sum(2)
        dC[i] = (hs[i] * dy_c[:, i, None, :]).sum(2)
        q = g * (hs[i - 1] if i > 0 else h0) * a
        dAt = dAt + q * delta_c[:, i, None, :]
        dq[i] = (q * At).sum(1)
        decay_next = a
    return g, decay_next, torch.stack(gB, 1), torch.stack(dB, 1), torch.stack(dC, 1), torch.stack(dq, 1), dAt

class Compiled(torch.autograd.Function):
    fwd = bwd = None
    @staticmethod
    def forward(ctx, u, delta, A, B, C, cs):
        Bsz, T, D = u.shape
        At = A.t().contiguous(); du = delta * u
        n = T // cs
        h = u.new_zeros(Bsz, At.shape[0], D)
        ys, starts = [], []
        for c in range(n):
            sl = slice(c * cs, (c + 1) * cs)
            starts.append(h)
            y, h = Compiled.fwd(h, delta[:, sl], du[:, sl], B[:, sl], C[:, sl], At)
            ys.append(y)
        ctx.save_for_backward(u, delta, At, B, C, torch.stack(starts, 1)); ctx.cs = cs
        return torch.cat(ys, 1)
    @staticmethod
    def backward(ctx, dy):
        u, delta, At, B, C, starts = ctx.saved_tensors; cs = ctx.cs
        du = delta * u
        g = torch.zeros_like(starts[:, 0]); dn = torch.ones_like(g)
        gBs, dBs, dCs, dqs, dAt = [], [], [], [], 0
        for c in reversed(range(starts.shape[1])):
            sl = slice(c * cs, (c + 1) * cs)
            g, dn, gB, dB, dC, dq, dA_c = Compiled.bwd(starts[:, c], g, dn, delta[:, sl], du[:, sl], B[:, sl], C[:, sl], dy[:, sl].contiguous(), At)
            gBs.append(gB); dBs.append(dB); dCs.append(dC); dqs.append(dq); dAt = dAt + dA_c
        gB = torch.cat(gBs[::-1], 1)
        return gB * delta, gB * u + torch.cat(dqs[::-1], 1), dAt.sum(0).t(), torch.cat(dBs[::-1], 1), torch.cat(dCs[::-1], 1), None

def inputs(Bs, T, D, N, dev):
    g = torch.Generator(device='cpu').manual_seed(0)
    u = torch.randn(Bs, T, D, generator=g); dl = torch.nn.functional.softplus(torch.randn(Bs, T, D, generator=g) - 3)
    A = -torch.arange(1, N + 1.).repeat(D, 1); B = torch.randn(Bs, T, N, generator=g); C = torch.randn(Bs, T, N, generator=g)
    return [t.to(dev).requires_grad_() for t in (u, dl, A, B, C)]

def timeit(f, ins, dy, rep=3):
    for _ in range(1): y = f(*ins); torch.autograd.grad(y, ins, dy)
    torch.cuda.synchronize(); ts = []
    for _ in range(rep):
        torch.cuda.reset_peak_memory_stats()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); y = f(*ins); torch.autograd.grad(y, ins, dy); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return min(ts), torch.cuda.max_memory_allocated() / 2**20

if __name__ == '__main__':
    dev = 'cuda'
    # correctness of the compiled path (small)
    ins = inputs(2, 64, 16, 8, dev); dy = torch.randn(2, 64, 16, device=dev)
    ref = naive_selective_scan(*ins)[0]; gr = torch.autograd.grad(ref, ins, dy)
    for cs in map(int, sys.argv[1].split(',')):
        t0 = time.time()
        Compiled.fwd = torch.compile(fwd_chunk, dynamic=False); Compiled.bwd = torch.compile(bwd_chunk, dynamic=False)
        out = Compiled.apply(*ins, cs); g2 = torch.autograd.grad(out, ins, dy)
        print('cs', cs, 'max rel err', max(((a - b).norm() / b.norm()).item() for a, b in zip([out, *g2], [ref, *gr])), 'compile+run s', round(time.time() - t0, 1), flush=True)
        for Bs, T in [(8, 400), (8, 1280), (64, 400)]:
            ins2 = inputs(Bs, T, 512, 64, dev); dy2 = torch.randn(Bs, T, 512, device=dev)
            t0 = time.time(); ms, mb = timeit(lambda *x: Compiled.apply(*x, cs), ins2, dy2)
            print(f'  compiled cs={cs} B={Bs} T={T}: {ms:.1f} ms, peak {mb:.0f} MB (incl. compile {time.time()-t0:.0f}s)', flush=True)
    for Bs, T in [(8, 400), (8, 1280), (64, 400)]:
        ins2 = inputs(Bs, T, 512, 64, dev); dy2 = torch.randn(Bs, T, 512, device=dev)
        ms, mb = timeit(lambda *x: chunk_selective_scan(*x, chunk_size=64)[0], ins2, dy2)
        print(f'  eager chunk B={Bs} T={T}: {ms:.1f} ms, peak {mb:.0f} MB', flush=True)
        if Bs == 8:
            ms, mb = timeit(lambda *x: naive_selective_scan(*x)[0], ins2, dy2, rep=1)
            print(f'  eager naive B={Bs} T={T}: {ms:.1f} ms, peak {mb:.0f} MB', flush=True)
