"""Does a spinning one-block kernel on another stream (the emulated link's hold) slow batch-1 compute?"""
import torch, time
torch.manual_seed(0)
dev = "cuda"
H, I = 3584, 2560
x = torch.randn(1, H, device=dev, dtype=torch.bfloat16)
W = [torch.randn(2 * I, H, device=dev, dtype=torch.bfloat16) for _ in range(8)]  # 8 experts' gate/up
W2 = [torch.randn(H, I, device=dev, dtype=torch.bfloat16) for _ in range(8)]
side = torch.cuda.Stream()
host = torch.empty(55_050_240 // 2, dtype=torch.bfloat16, pin_memory=True)
devbuf = torch.empty_like(host, device=dev)

def work(n=200):
    for _ in range(n):
        for a, b in zip(W, W2):
            h = x @ a.t()
            y = h[:, :I] @ b.t()
    return y

def timed(n=200):
    # only this stream is synchronised: a device-wide synchronize would wait for the side stream's spinner
    torch.cuda.current_stream().synchronize(); s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    s.record(); work(n); e.record(); e.synchronize(); return s.elapsed_time(e) / n

work(20)
# cycles per ms
s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
s.record(); torch.cuda._sleep(10_000_000); e.record(); torch.cuda.synchronize(); cpm = 10_000_000 / s.elapsed_time(e)
print(f"sleep cycles per ms {cpm:.0f}")
for rep in range(3):
    base = timed()
    # spinner: enough to cover the whole measurement
    with torch.cuda.stream(side):
        torch.cuda._sleep(int(cpm * base * 200 * 3))
    spun = timed()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        for _ in range(60):
            devbuf.copy_(host, non_blocking=True)
    copied = timed()
    torch.cuda.synchronize()
    print(f"round {rep}: per step (8 expert GEMV pairs) alone {base*1e3:.1f} us, beside a spinner {spun*1e3:.1f} us "
          f"({spun/base:.2f}x), beside native H2D copies {copied*1e3:.1f} us ({copied/base:.2f}x)")
print("SMs", torch.cuda.get_device_properties(0).multi_processor_count)
