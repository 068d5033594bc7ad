/*
 * cuda_emu.h - a CPU stand-in for the subset of CUDA that kernels/gpu_*.cu
 * use, so that their exact source can run (and be checked, under ASan) on a
 * machine without a GPU; tests/cuda-emu/build.sh builds with it. A launch
 * runs its CTAs on a few host threads; the threads of a CTA are fibers with
 * real barriers (__syncthreads, warp shuffles; a deadlock is reported), run
 * in threadIdx order, reverse or shuffled (EMU_ORDER, thread_order),
 * cp.async copies are deferred until the thread waits for their group
 * (reading a buffer too early sees stale bytes or the 0xcd poison shared
 * memory starts each CTA with), dynamic shared memory is an exact-size
 * malloc (overruns are ASan reports), and cuBLAS's GemmEx is a
 * double-precision host GEMM. Work queued on a stream (launches, async
 * copies, event records and waits, host functions, GemmEx) runs later on
 * that stream's own host thread (emu_stream below); the legacy stream runs
 * in the caller and waits for none of them. A launch with programmatic
 * stream serialization (PDL) has one CTA started before the kernel ahead
 * of it, wholly (emu::run_op), and every thread must wait for the grid.
 *
 * Not emulated: the GPU's own float behaviour (FMA contraction, canonical
 * NaNs, FTZ), timing, memory models weaker than the host's, the GPU's
 * interleavings (streams overlap here as the host scheduler lets them).
 */
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
#define __restrict__ __restrict

struct dim3 {
	unsigned x, y, z;
	dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct emu_uint3 {
	unsigned x, y, z;
};
struct alignas(16) int4 {
	int x, y, z, w;
};
struct alignas(16) float4 {
	float x, y, z, w;
};
struct alignas(8) uint2 {
	unsigned x, y;
};
static inline float4 make_float4(float a, float b, float c, float d)
{
	return float4{ a, b, c, d };
}

/* ---- runtime types -------------------------------------------------------- */

enum cudaError_t {
	cudaSuccess = 0,
	cudaErrorInvalidValue = 1,
	cudaErrorMemoryAllocation = 2,
	cudaErrorInsufficientDriver = 35,
	cudaErrorDevicesUnavailable = 46,
	cudaErrorNoDevice = 100,
	cudaErrorInvalidDevice = 101,
	cudaErrorNoKernelImageForDevice = 209,
	cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;
/* A stream is a host thread that runs what is queued on it, in order,
 * later than the call that queued it (as a GPU does): copies, kernels,
 * event records and waits, host functions, cuBLAS calls. The legacy stream
 * (0) runs its work in the calling thread, and does not wait for these
 * streams (they are all taken as non-blocking, which is what this project
 * creates). So work read back without syncing the stream it ran on is
 * seen as it was, not as it will be: a missing sync fails here as on a
 * GPU. To make that the usual case rather than a matter of luck, a stream
 * starts each piece of work EMU_STREAM_DELAY_US microseconds (default 200;
 * 0: at once) after it could, as a GPU's copy or kernel takes time: the
 * host is then ahead of the streams, as it is on a GPU.
 *
 * A launch is queued as what it is (emu::KOp), not as a closure: where a
 * kernel launched with programmatic stream serialization (PDL,
 * cudaLaunchKernelEx) follows another kernel, the stream starts one of its
 * CTAs before that kernel (emu::run_op), as a GPU may. */
namespace emu {
struct KOp;
}
struct emu_stream;
/* One piece of queued work: a launch (k) or anything else (f). */
struct emu_op {
	std::function<void()> f;
	std::shared_ptr<emu::KOp> k;
};
namespace emu {
/* Runs x, and each PDL launch right behind it in turn, taken off stream
 * s's queue or (a graph's replay) off `more`; both NULL: the legacy
 * stream, nothing paired. Defined below the launches. */
inline void run_op(emu_stream *s, emu_op x, std::deque<emu_op> *more);
}
struct emu_stream {
	std::mutex mu;
	std::condition_variable cv;
	std::deque<emu_op> q;
	/* stream capture (cuda_emu_graph.h): work queued while cap is set is
	 * recorded there instead of run; cap_bad: a call the capture forbids
	 * was made (the end of the capture then fails) */
	std::vector<emu_op> *cap = nullptr;
	bool cap_bad = false;
	bool busy = false, stop = false;
	std::thread th; /* last: started once the rest is constructed */
	emu_stream() : th([this] { run(); }) {}
	~emu_stream()
	{
		drain();
		{
			std::lock_guard<std::mutex> lk(mu);
			stop = true;
		}
		cv.notify_all();
		th.join();
	}
	static unsigned delay_us()
	{
		static const unsigned d = [] {
			const char *e = getenv("EMU_STREAM_DELAY_US");
			long v = e && *e ? strtol(e, nullptr, 10) : 200;
			return v < 0 ? 0u : v > 100000 ? 100000u : (unsigned)v;
		}();
		return d;
	}
	void run()
	{
		for (;;) {
			emu_op x;
			{
				std::unique_lock<std::mutex> lk(mu);
				cv.wait(lk, [&] { return stop || !q.empty(); });
				if (q.empty())
					return;
				x = std::move(q.front());
				q.pop_front();
				busy = true;
			}
			if (delay_us())
				std::this_thread::sleep_for(
					std::chrono::microseconds(delay_us()));
			emu::run_op(this, std::move(x), nullptr);
			{
				std::lock_guard<std::mutex> lk(mu);
				busy = false;
			}
			cv.notify_all();
		}
	}
	void push(emu_op x)
	{
		{
			std::lock_guard<std::mutex> lk(mu);
			q.push_back(std::move(x));
		}
		cv.notify_all();
	}
	/* The next op if it is a PDL launch (taken off the queue), else an
	 * empty one: what run_op pairs with the kernel it runs. */
	emu_op take_pdl();
	void drain()
	{
		std::unique_lock<std::mutex> lk(mu);
		cv.wait(lk, [&] { return q.empty() && !busy; });
	}
	bool idle()
	{
		std::lock_guard<std::mutex> lk(mu);
		return q.empty() && !busy;
	}
};
typedef emu_stream *cudaStream_t;
#define cudaStreamLegacy ((cudaStream_t)0)
/* recorded: records asked for; done: records that have happened (the
 * stream reached them). Complete when done catches up with recorded. */
struct emu_event {
	std::chrono::steady_clock::time_point t;
	std::mutex mu;
	std::condition_variable cv;
	uint64_t recorded = 0, done = 0;
	void wait_for(uint64_t gen)
	{
		std::unique_lock<std::mutex> lk(mu);
		cv.wait(lk, [&] { return done >= gen; });
	}
};
typedef emu_event *cudaEvent_t;
enum { cudaStreamNonBlocking = 1 };
enum cudaMemcpyKind {
	cudaMemcpyHostToDevice = 1,
	cudaMemcpyDeviceToHost = 2,
	cudaMemcpyDeviceToDevice = 3,
};
enum cudaDeviceAttr {
	cudaDevAttrMultiProcessorCount = 16,
	cudaDevAttrComputeCapabilityMajor = 75,
};
struct cudaDeviceProp {
	char name[256];
	size_t totalGlobalMem;
	int major, minor, multiProcessorCount;
};

namespace emu {
inline thread_local cudaError_t last_error = cudaSuccess;
/* The multiprocessors the device says it has: 8, or EMU_SMS (1..1024;
 * 132 to plan launches, tiles and splits as on an H100). */
inline int sms_from_env()
{
	const char *v = getenv("EMU_SMS");
	const int n = v ? atoi(v) : 0;
	return n >= 1 && n <= 1024 ? n : 8;
}
inline const int sms = sms_from_env();

/* every live stream, for cudaDeviceSynchronize and the implicitly
 * synchronising calls (cudaFree, cudaFreeHost, cudaHostUnregister) */
inline std::mutex streams_mu;
inline std::vector<emu_stream *> streams;

/* The stream this thread is capturing, if any. */
inline thread_local emu_stream *capturing = nullptr;

/* A call that waits for the device (a sync, a synchronous copy or memset,
 * cudaFree) while this thread captures a stream: CUDA refuses it and the
 * capture is invalidated; true then. */
inline bool capture_violation()
{
	if (!capturing)
		return false;
	capturing->cap_bad = true;
	fprintf(stderr, "emu: a synchronising call during stream capture\n");
	return true;
}

/* Runs x on stream s: later on its thread, or now on the legacy stream;
 * recorded instead while s is being captured. */
inline void enqueue_op(cudaStream_t s, emu_op x)
{
	if (s && s->cap)
		s->cap->push_back(std::move(x));
	else if (s)
		s->push(std::move(x));
	else
		run_op(nullptr, std::move(x), nullptr);
}

inline void enqueue(cudaStream_t s, std::function<void()> f)
{
	enqueue_op(s, emu_op{ std::move(f), nullptr });
}

inline void sync_all()
{
	std::vector<emu_stream *> v;
	{
		std::lock_guard<std::mutex> lk(streams_mu);
		v = streams;
	}
	for (emu_stream *s : v)
		s->drain();
}
} // namespace emu

static inline const char *cudaGetErrorString(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "no error";
	case cudaErrorInvalidValue: return "invalid argument";
	case cudaErrorMemoryAllocation: return "out of memory";
	default: return "emulated error";
	}
}
static inline const char *cudaGetErrorName(cudaError_t e)
{
	return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated";
}
static inline cudaError_t cudaGetLastError(void)
{
	cudaError_t e = emu::last_error;
	emu::last_error = cudaSuccess;
	return e;
}
static inline cudaError_t cudaSetDevice(int d)
{
	return d == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
static inline cudaError_t cudaGetDeviceCount(int *n)
{
	*n = 1;
	return cudaSuccess;
}
/* The compute capability's major is 9 (Hopper: PDL, cudaLaunchKernelEx);
 * every other attribute asked is emu::sms (the multiprocessors; for the
 * host-registration ones in cuda_emu_rt.h, non-zero: supported). */
static inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int)
{
	*v = a == cudaDevAttrComputeCapabilityMajor ? 9 : emu::sms;
	return cudaSuccess;
}
static inline cudaError_t cudaMalloc(void **p, size_t n)
{
	/* exact size, so that ASan sees an overrun of the last byte */
	*p = malloc(n ? n : 1);
	return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <class T> static inline cudaError_t cudaMalloc(T **p, size_t n)
{
	return cudaMalloc((void **)p, n);
}
static inline cudaError_t cudaFree(void *p)
{
	if (emu::capture_violation())
		return (cudaError_t)900; /* cudaErrorStreamCaptureUnsupported */
	emu::sync_all(); /* cudaFree synchronises the device */
	free(p);
	return cudaSuccess;
}
static inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n,
				     cudaMemcpyKind)
{
	if (emu::capture_violation())
		return (cudaError_t)900;
	memmove(d, s, n);
	return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n,
					  cudaMemcpyKind, cudaStream_t st)
{
	emu::enqueue(st, [d, s, n] { memmove(d, s, n); });
	return cudaSuccess;
}
static inline cudaError_t cudaMemset(void *d, int v, size_t n)
{
	if (emu::capture_violation())
		return (cudaError_t)900;
	memset(d, v, n);
	return cudaSuccess;
}
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
	*s = new emu_stream();
	std::lock_guard<std::mutex> lk(emu::streams_mu);
	emu::streams.push_back(*s);
	return cudaSuccess;
}
static inline cudaError_t cudaStreamDestroy(cudaStream_t s)
{
	if (!s)
		return cudaErrorInvalidValue;
	{
		std::lock_guard<std::mutex> lk(emu::streams_mu);
		for (size_t i = 0; i < emu::streams.size(); i++)
			if (emu::streams[i] == s) {
				emu::streams.erase(emu::streams.begin() + (long)i);
				break;
			}
	}
	delete s; /* runs what is queued first, as CUDA does */
	return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
	if (emu::capture_violation())
		return (cudaError_t)900;
	if (s)
		s->drain();
	return cudaSuccess;
}
static inline cudaError_t cudaEventCreate(cudaEvent_t *e)
{
	*e = new emu_event();
	return cudaSuccess;
}
static inline uint64_t emu_event_recorded(cudaEvent_t e)
{
	std::lock_guard<std::mutex> lk(e->mu);
	return e->recorded;
}
static inline cudaError_t cudaEventDestroy(cudaEvent_t e)
{
	if (!e)
		return cudaErrorInvalidValue;
	e->wait_for(emu_event_recorded(e)); /* a record still queued uses it */
	delete e;
	return cudaSuccess;
}
static inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
	if (!e)
		return cudaErrorInvalidValue;
	uint64_t gen;
	{
		std::lock_guard<std::mutex> lk(e->mu);
		gen = ++e->recorded;
	}
	emu::enqueue(s, [e, gen] {
		{
			std::lock_guard<std::mutex> lk(e->mu);
			e->t = std::chrono::steady_clock::now();
			if (e->done < gen)
				e->done = gen;
		}
		e->cv.notify_all();
	});
	return cudaSuccess;
}
static inline cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
	if (!e)
		return cudaErrorInvalidValue;
	e->wait_for(emu_event_recorded(e));
	return cudaSuccess;
}
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a,
					       cudaEvent_t b)
{
	std::lock_guard<std::mutex> la(a->mu);
	if (a->done < a->recorded || !a->recorded)
		return (cudaError_t)600; /* cudaErrorNotReady */
	std::unique_lock<std::mutex> lb(b->mu, std::defer_lock);
	if (a != b)
		lb.lock();
	if (b->done < b->recorded || !b->recorded)
		return (cudaError_t)600;
	*ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
	return cudaSuccess;
}

#include "cuda_emu_rt.h" /* streams, events, host registration: the GPU tier */
#include "cuda_emu_graph.h" /* CUDA graphs by stream capture */

/* ---- device intrinsics ----------------------------------------------------- */

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

static inline float __uint_as_float(unsigned u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}
static inline unsigned __float_as_uint(float f)
{
	unsigned u;
	memcpy(&u, &f, 4);
	return u;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline int __float2int_rn(float f) { return (int)nearbyintf(f); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
template <class T> static inline T __ldg(const T *p) { return *p; }
/* The device's memory is the host's and its CTAs run on host threads: a
 * fence is a host fence, an atomic a host atomic, an L2 load a load. */
template <class T> static inline T __ldcg(const T *p) { return *p; }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned *p, unsigned v)
{
	return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline int __dp4a(int a, int b, int c)
{
	for (int i = 0; i < 4; i++)
		c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
	return c;
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
	uint64_t v = (uint64_t)y << 32 | x;
	unsigned r = 0;
	for (int i = 0; i < 4; i++) {
		unsigned sel = (s >> (4 * i)) & 0xf;
		unsigned b = (unsigned)(v >> (8 * (sel & 7))) & 0xff;
		if (sel & 8)
			b = (b & 0x80) ? 0xff : 0;
		r |= b << (8 * i);
	}
	return r;
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned sh)
{
	return (unsigned)((((uint64_t)hi << 32) | lo) >> (sh & 31));
}

struct __half {
	unsigned short x;
};
/* round to nearest even, by integer arithmetic (NaN: canonical 0x7fff as
 * the GPU's cvt gives; the code under test must not rely on it) */
static inline __half __float2half_rn(float f)
{
	unsigned u = __float_as_uint(f);
	unsigned sign = (u >> 16) & 0x8000u, ex = (u >> 23) & 0xffu,
		 man = u & 0x7fffffu;
	if (ex == 0xff)
		return __half{ (unsigned short)(man ? 0x7fff : sign | 0x7c00) };
	if (!ex && !man)
		return __half{ (unsigned short)sign };
	uint64_t m = ex ? man | 0x800000u : man;
	int E = (ex ? (int)ex : 1) - 150;
	int lg = 63 - __builtin_clzll(m) + E;
	int qe = lg - 10 < -24 ? -24 : lg - 10;
	int sh = qe - E;
	uint64_t q;
	if (sh <= 0)
		q = m << -sh;
	else if (sh >= 60)
		q = 0;
	else {
		q = m >> sh;
		uint64_t rem = m & ((1ull << sh) - 1), half = 1ull << (sh - 1);
		if (rem > half || (rem == half && (q & 1)))
			q++;
	}
	uint64_t bits = (uint64_t)(qe + 24) * 1024 + q;
	if (bits >= 0x7c00)
		bits = 0x7c00;
	return __half{ (unsigned short)(sign | bits) };
}
static inline unsigned short __half_as_ushort(__half h) { return h.x; }
static inline __half __ushort_as_half(unsigned short x) { return __half{ x }; }
/* exact, as the GPU's cvt.f32.f16 (a NaN: canonical 0x7fffffff, which the
 * code under test must not rely on) */
static inline float __half2float(__half h)
{
	unsigned sign = (unsigned)(h.x & 0x8000u) << 16, ex = (h.x >> 10) & 0x1fu,
		 man = h.x & 0x3ffu;
	if (ex == 0x1f)
		return __uint_as_float(man ? 0x7fffffffu : sign | 0x7f800000u);
	if (ex)
		return __uint_as_float(sign | (ex + 112) << 23 | man << 13);
	/* zero or subnormal: man x 2^-24, exact in float */
	float v = (float)man * 0x1p-24f;
	return sign ? -v : v;
}

/* ---- threads, CTAs, launches ------------------------------------------------- */

/*
 * A launch runs its CTAs on a few host threads (EMU_THREADS, default one per
 * CPU, never more than there are CTAs), each CTA whole on one of them, in
 * any order, as a GPU's multiprocessors would. The threads of a CTA are
 * fibers on that host thread, run round-robin in threadIdx
 * order (or another, EMU_ORDER: thread_order): a fiber runs until it waits
 * at a barrier (__syncthreads, or one of the two a warp shuffle makes) or
 * returns. A barrier thus costs a couple of context switches per thread
 * rather than a trip through the OS scheduler with hundreds of runnable
 * threads, and the interleaving inside a CTA is the same on every run
 * (with EMU_ORDER=random, for the same EMU_SEED). A CTA whose remaining
 * threads all wait at barriers that cannot complete (a __syncthreads some threads skip, a shuffle with
 * lanes gone) is reported and aborts: a GPU would hang or worse.
 *
 * Each fiber has its own stack (mmap'ed, a guard page below it), its own
 * cp.async groups, and threadIdx; blockIdx, blockDim and gridDim belong to
 * the host thread running the CTA. Under ASan the stack switches are
 * announced (__sanitizer_start_switch_fiber), so reports stay right.
 */
namespace emu {

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifndef EMU_ASAN
#define EMU_ASAN 0
#endif

/* Switching fibers: on x86-64 a few instructions (the callee-saved
 * registers, MXCSR and the x87 control word; no system call), elsewhere or
 * with -DEMU_UCONTEXT glibc's swapcontext (two sigprocmask calls each). */
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_FAST_SWITCH 1
extern "C" void emu_ctx_switch(void **save_sp, void *load_sp);
__asm__(".text\n"
	".weak emu_ctx_switch\n"
	".type emu_ctx_switch, @function\n"
	"emu_ctx_switch:\n"
	"	pushq %rbp\n"
	"	pushq %rbx\n"
	"	pushq %r12\n"
	"	pushq %r13\n"
	"	pushq %r14\n"
	"	pushq %r15\n"
	"	subq $8, %rsp\n"
	"	stmxcsr (%rsp)\n"
	"	fnstcw 4(%rsp)\n"
	"	movq %rsp, (%rdi)\n"
	"	movq %rsi, %rsp\n"
	"	ldmxcsr (%rsp)\n"
	"	fldcw 4(%rsp)\n"
	"	addq $8, %rsp\n"
	"	popq %r15\n"
	"	popq %r14\n"
	"	popq %r13\n"
	"	popq %r12\n"
	"	popq %rbx\n"
	"	popq %rbp\n"
	"	ret\n"
	".size emu_ctx_switch, .-emu_ctx_switch\n");
#else
#define EMU_FAST_SWITCH 0
#endif

struct Copy {
	void *dst;
	const void *src;
	size_t n;
};

/* A barrier among `expected` fibers of one host thread: the last to arrive
 * bumps the generation the others wait on. */
struct Bar {
	unsigned expected = 0, arrived = 0;
	uint64_t gen = 0;
};

struct Fiber {
	emu_uint3 tid;
	ucontext_t ctx; /* swapcontext's */
	void *sp;	/* emu_ctx_switch's */
	unsigned char *stack = nullptr;
	bool done = false;
	bool gwaited = false; /* called cudaGridDependencySynchronize */
	const Bar *waiting = nullptr;
	std::vector<std::vector<Copy>> groups; /* committed cp.async groups */
	std::vector<Copy> open;		       /* issued, not yet committed */
	void *fake = nullptr;		       /* ASan's fake stack */
};

/* A host thread running CTAs: its fibers (kept, with their stacks, from one
 * launch to the next) and the CTA's state. */
struct Worker {
	ucontext_t sched;
	void *sched_sp;
	Fiber *cur = nullptr;
	std::vector<std::unique_ptr<Fiber>> fibers;
	emu_uint3 bid;
	dim3 bdim, gdim;
	Bar bar;
	std::vector<Bar> warp_bars;
	std::vector<uint64_t> warp_buf;
	unsigned char *smem = nullptr;
	size_t smem_bytes = 0;
	bool progress = false;
	/* the order cta_loop runs the threads in, each round (thread_order) */
	std::vector<unsigned> order;
	uint64_t rng = 0;
	/* the launch is PDL (every thread must wait for the grid before its
	 * end); hold: this CTA runs ahead of the kernel before it, and its
	 * threads stop at the wait (gbar) until that kernel has run */
	bool pdl = false, hold = false;
	Bar gbar;
	void (*body)(void *) = nullptr; /* one thread of the kernel */
	void *arg = nullptr;
	void *sched_fake = nullptr;
	const void *sched_bottom = nullptr;
	size_t sched_size = 0;
};

inline thread_local Worker *t_w;
inline const size_t stack_bytes = (EMU_ASAN ? 1024 : 256) * 1024;

inline void *dyn_smem() { return t_w->smem; }

/* fiber -> the host thread's scheduler */
inline void yield()
{
	Worker *w = t_w;
	Fiber *f = w->cur;
#if EMU_ASAN
	__sanitizer_start_switch_fiber(&f->fake, w->sched_bottom, w->sched_size);
#endif
#if EMU_FAST_SWITCH
	emu_ctx_switch(&f->sp, w->sched_sp);
#else
	swapcontext(&f->ctx, &w->sched);
#endif
#if EMU_ASAN
	__sanitizer_finish_switch_fiber(f->fake, &w->sched_bottom,
					&w->sched_size);
#endif
}

inline void bar_wait(Bar &b)
{
	Worker *w = t_w;
	const uint64_t g = b.gen;
	w->progress = true;
	if (++b.arrived == b.expected) {
		b.arrived = 0;
		b.gen++;
		return;
	}
	w->cur->waiting = &b;
	while (b.gen == g)
		yield();
	w->cur->waiting = nullptr;
}

inline void fiber_main()
{
	Worker *w = t_w;
	Fiber *f = w->cur;
#if EMU_ASAN
	__sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom,
					&w->sched_size);
#endif
	w->body(w->arg);
	bool pending = !f->open.empty();
	for (auto &gr : f->groups)
		pending |= !gr.empty();
	if (pending) {
		fprintf(stderr, "emu: cp.async never waited for (block %u,%u "
				"thread %u)\n",
			w->bid.x, w->bid.y, f->tid.x);
		abort();
	}
	f->groups.clear();
	f->done = true;
	w->progress = true;
#if EMU_ASAN
	__sanitizer_start_switch_fiber(nullptr, w->sched_bottom, w->sched_size);
#endif
#if EMU_FAST_SWITCH
	emu_ctx_switch(&f->sp, w->sched_sp);
#else
	setcontext(&w->sched);
#endif
	abort(); /* not reached: the fiber is started afresh */
}

inline Fiber *fiber_new()
{
	const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	void *m = mmap(nullptr, stack_bytes + pg, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
		       -1, 0);
	if (m == MAP_FAILED) {
		fprintf(stderr, "emu: no memory for a fiber stack\n");
		abort();
	}
	mprotect(m, pg, PROT_NONE); /* overflow: a fault, not corruption */
	Fiber *f = new Fiber();
	f->stack = (unsigned char *)m + pg;
	return f;
}

/*
 * The order a CTA's threads run in, each round of cta_loop (EMU_ORDER):
 * "forward" (the default: threadIdx order), "reverse", or "random" (a
 * fresh shuffle each round, seeded by EMU_SEED, the block and the round,
 * so a run is repeatable). A thread runs until its next barrier, so
 * between two barriers one thread's writes to shared memory are all seen
 * by threads that run after it and none by threads that run before: a
 * read with no barrier (or shuffle) between it and another thread's write
 * gets the new bytes in one order and the old ones in another. Running
 * the tests in reverse too therefore finds such a race whichever way
 * round its two threads are, where one order alone hides half of them (a
 * missing __syncthreads or __syncwarp, which a GPU may or may not forgive).
 */
enum { ORDER_FORWARD, ORDER_REVERSE, ORDER_RANDOM };
inline int order_kind()
{
	static const int k = [] {
		const char *e = getenv("EMU_ORDER");
		if (!e || !*e || !strcmp(e, "forward"))
			return (int)ORDER_FORWARD;
		if (!strcmp(e, "reverse"))
			return (int)ORDER_REVERSE;
		if (!strcmp(e, "random"))
			return (int)ORDER_RANDOM;
		fprintf(stderr, "emu: EMU_ORDER=%s: expected forward, reverse "
				"or random\n", e);
		exit(2);
	}();
	return k;
}

inline uint64_t order_seed()
{
	static const uint64_t s = [] {
		const char *e = getenv("EMU_SEED");
		return e && *e ? (uint64_t)strtoull(e, nullptr, 0) : 1ull;
	}();
	return s;
}

/* w->order for the next round of nt threads. */
inline void thread_order(Worker *w, unsigned nt)
{
	std::vector<unsigned> &o = w->order;
	if (o.size() != nt) {
		o.resize(nt);
		for (unsigned t = 0; t < nt; t++)
			o[t] = order_kind() == ORDER_REVERSE ? nt - 1 - t : t;
	}
	if (order_kind() != ORDER_RANDOM)
		return;
	for (unsigned t = nt; t > 1; t--) { /* Fisher-Yates, xorshift64* */
		w->rng ^= w->rng >> 12;
		w->rng ^= w->rng << 25;
		w->rng ^= w->rng >> 27;
		const unsigned j = (unsigned)((w->rng * 0x2545f4914f6cdd1dull) >>
					      33) % t;
		std::swap(o[t - 1], o[j]);
	}
}

/* Sets CTA w->bid up with nt threads, none started. */
inline void cta_begin(Worker *w, unsigned nt)
{
	while (w->fibers.size() < nt)
		w->fibers.emplace_back(fiber_new());
	w->bar = Bar{ nt, 0, 0 };
	for (unsigned i = 0; i < (nt + 31) / 32; i++)
		w->warp_bars[i] = Bar{ nt - 32 * i < 32 ? nt - 32 * i : 32, 0, 0 };
	memset(w->smem, 0xcd, w->smem_bytes ? w->smem_bytes : 1);
	w->order.clear();
	w->rng = (order_seed() ^ ((uint64_t)w->bid.y << 32 | w->bid.x)) *
			 0x9e3779b97f4a7c15ull | 1;
	for (unsigned t = 0; t < nt; t++) {
		Fiber *f = w->fibers[t].get();
		f->tid = { t, 0, 0 };
		f->done = false;
		f->gwaited = false;
		f->waiting = nullptr;
#if EMU_ASAN
		/* the last CTA's fiber_main never returned: its frame's
		 * redzones are still poisoned (deeper frames all returned
		 * and unpoisoned theirs) */
		__asan_unpoison_memory_region(f->stack + stack_bytes - 16384,
					      16384);
#endif
#if EMU_FAST_SWITCH
		/* what emu_ctx_switch pops: MXCSR 0x1f80 and x87 control
		 * word 0x37f (the defaults), six registers, then a return
		 * into fiber_main with the stack as a call leaves it */
		uint64_t *top = (uint64_t *)(f->stack + stack_bytes);
		memset(top - 9, 0, 9 * sizeof(uint64_t));
		top[-2] = (uint64_t)(uintptr_t)&fiber_main;
		top[-9] = (uint64_t)0x037f << 32 | 0x1f80;
		f->sp = top - 9;
#else
		getcontext(&f->ctx);
		f->ctx.uc_stack.ss_sp = f->stack;
		f->ctx.uc_stack.ss_size = stack_bytes;
		f->ctx.uc_link = nullptr;
		makecontext(&f->ctx, fiber_main, 0);
#endif
	}
}

/* Runs the CTA's threads until they are all done (false), or, with
 * w->hold, until none can go on and some wait for the grid (true: the
 * caller runs the kernel before, then calls this again). */
inline bool cta_loop(Worker *w, unsigned nt)
{
	unsigned left = 0;
	for (unsigned t = 0; t < nt; t++)
		left += !w->fibers[t]->done;
	while (left) {
		w->progress = false;
		thread_order(w, nt);
		for (unsigned i = 0; i < nt; i++) {
			Fiber *f = w->fibers[w->order[i]].get();
			if (f->done)
				continue;
			w->cur = f;
#if EMU_ASAN
			__sanitizer_start_switch_fiber(&w->sched_fake, f->stack,
						       stack_bytes);
#endif
#if EMU_FAST_SWITCH
			emu_ctx_switch(&w->sched_sp, f->sp);
#else
			swapcontext(&w->sched, &f->ctx);
#endif
#if EMU_ASAN
			__sanitizer_finish_switch_fiber(w->sched_fake, nullptr,
							nullptr);
#endif
			left -= f->done;
		}
		if (left && !w->progress && w->hold) {
			for (unsigned t = 0; t < nt; t++)
				if (!w->fibers[t]->done &&
				    w->fibers[t]->waiting == &w->gbar)
					return true;
		}
		if (left && !w->progress) {
			unsigned at_sync = 0, at_warp = 0;
			for (unsigned t = 0; t < nt; t++) {
				const Fiber *f = w->fibers[t].get();
				at_sync += !f->done && f->waiting == &w->bar;
				at_warp += !f->done && f->waiting &&
					   f->waiting != &w->bar;
			}
			fprintf(stderr,
				"emu: deadlock in block (%u,%u) of %u threads: "
				"%u wait at __syncthreads, %u in a warp "
				"shuffle, %u returned (a GPU would hang)\n",
				w->bid.x, w->bid.y, nt, at_sync, at_warp,
				nt - left);
			abort();
		}
	}
	w->cur = nullptr;
	if (w->pdl) {
		unsigned never = 0;
		for (unsigned t = 0; t < nt; t++)
			never += !w->fibers[t]->gwaited;
		if (never) {
			fprintf(stderr,
				"emu: a launch with programmatic stream "
				"serialization (PDL): %u of the %u threads of "
				"block (%u,%u) never called "
				"cudaGridDependencySynchronize (each must, "
				"before it reads what the kernel before wrote)\n",
				never, nt, w->bid.x, w->bid.y);
			abort();
		}
	}
	return false;
}

/* Runs CTA w->bid with nt threads to the end. */
inline void run_cta(Worker *w, unsigned nt)
{
	cta_begin(w, nt);
	cta_loop(w, nt);
}

/* cudaGridDependencySynchronize: a thread waits for the kernel before
 * (here that kernel has run, unless this CTA was started ahead of it) */
inline void grid_wait()
{
	Worker *w = t_w;
	w->cur->gwaited = true;
	if (!w->hold)
		return;
	const uint64_t g = w->gbar.gen;
	w->progress = true;
	w->cur->waiting = &w->gbar;
	while (w->gbar.gen == g)
		yield();
	w->cur->waiting = nullptr;
}

inline std::mutex launch_mu;
inline std::vector<std::unique_ptr<Worker>> workers;

inline unsigned host_threads()
{
	const char *e = getenv("EMU_THREADS");
	long v = e && *e ? strtol(e, nullptr, 10) : 0;
	if (v < 1)
		v = (long)std::thread::hardware_concurrency();
	return v < 1 ? 1u : v > 256 ? 256u : (unsigned)v;
}

template <class T> inline T warp_xchg(T v, int src_lane)
{
	Worker *w = t_w;
	const unsigned lane = w->cur->tid.x & 31, wi = w->cur->tid.x >> 5;
	uint64_t *buf = &w->warp_buf[wi * 32];
	uint64_t slot = 0;
	memcpy(&slot, &v, sizeof(T));
	buf[lane] = slot;
	bar_wait(w->warp_bars[wi]);
	T r;
	memcpy(&r, &buf[src_lane & 31], sizeof(T));
	bar_wait(w->warp_bars[wi]);
	return r;
}

template <class F, class Tup, size_t... I>
inline void call(F k, Tup &t, std::index_sequence<I...>)
{
	k(std::get<I>(t)...);
}

/* A launch as queued: the kernel's thread body, its arguments (as they
 * were at the call), the shape, and whether it is PDL. */
struct KOp {
	void (*body)(void *);
	std::shared_ptr<void> st;
	dim3 g, b;
	size_t sm;
	bool pdl;
};

/* Sets w up for one of k's CTAs (on this host thread: t_w is w). */
inline void worker_setup(Worker *w, const KOp &k)
{
	const unsigned nt = k.b.x * k.b.y * k.b.z;
	w->bdim = k.b;
	w->gdim = k.g;
	w->body = k.body;
	w->arg = k.st.get();
	w->smem_bytes = k.sm;
	/* exact size: ASan sees an overrun of the last byte */
	w->smem = (unsigned char *)malloc(k.sm ? k.sm : 1);
	w->warp_bars.assign((nt + 31) / 32, Bar{});
	w->warp_buf.assign(((nt + 31) / 32) * 32, 0);
	w->pdl = k.pdl;
	w->hold = false;
}

/* Runs a launch's CTAs on the worker threads (on the stream's thread, or
 * the caller's for the legacy stream), all but CTA `skip` (-1: none). */
inline void exec_launch(const KOp &k, long skip)
{
	const unsigned nt = k.b.x * k.b.y * k.b.z;
	const unsigned long ncta = (unsigned long)k.g.x * k.g.y;
	unsigned nw = host_threads();
	if (nw > ncta)
		nw = (unsigned)ncta;
	std::lock_guard<std::mutex> lk(launch_mu);
	while (workers.size() < nw)
		workers.emplace_back(new Worker());
	std::atomic<unsigned long> next{ 0 };
	auto work = [&](Worker *w) {
		Worker *prev = t_w;
		t_w = w;
		worker_setup(w, k);
		for (unsigned long i; (i = next++) < ncta;) {
			if ((long)i == skip)
				continue;
			w->bid = { (unsigned)(i % k.g.x), (unsigned)(i / k.g.x), 0 };
			run_cta(w, nt);
		}
		free(w->smem);
		w->smem = nullptr;
		t_w = prev;
	};
	std::vector<std::thread> ts;
	for (unsigned i = 1; i < nw; i++)
		ts.emplace_back(work, workers[i].get());
	work(workers[0].get());
	for (auto &th : ts)
		th.join();
}

/*
 * PDL, as a GPU may run it: a kernel launched with programmatic stream
 * serialization right after another kernel on the same stream (or graph)
 * can start before that kernel ends; only its threads' wait
 * (cudaGridDependencySynchronize) orders what follows after the kernel
 * before, and whatever it reads or writes before the wait races with
 * that kernel. Here one CTA of it (a different one each launch) runs up
 * to the wait before the kernel before runs at all, so a read of that
 * kernel's output before the wait sees the old bytes, and a write is seen
 * by it: results then differ from the same launches without PDL. The
 * rest of its CTAs, and that one past its wait, run after the next PDL
 * launch's early CTA has run to its own wait: so what that launch reads
 * before its wait is what was complete two launches back (a kernel of
 * one CTA included), nothing of the launch just ahead of it. Every
 * thread of every CTA must have waited (cta_loop says which did not).
 */
inline thread_local Worker *early_w[2]; /* the held CTAs of two launches */
inline std::mutex early_mu;
inline std::vector<std::unique_ptr<Worker>> early_workers; /* kept, as workers */
inline std::atomic<unsigned long> early_seq{ 0 };

/* Starts CTA j of k ahead (to its threads' wait) on early worker `slot`. */
inline void early_begin(const KOp &k, unsigned long j, int slot)
{
	if (!early_w[slot]) { /* two per host thread */
		std::lock_guard<std::mutex> lk(early_mu);
		early_workers.emplace_back(new Worker());
		early_w[slot] = early_workers.back().get();
	}
	Worker *w = early_w[slot], *prev = t_w;
	const unsigned nt = k.b.x * k.b.y * k.b.z;
	t_w = w;
	worker_setup(w, k);
	w->hold = true;
	w->bid = { (unsigned)(j % k.g.x), (unsigned)(j / k.g.x), 0 };
	cta_begin(w, nt);
	cta_loop(w, nt);
	t_w = prev;
}

/* Lets the CTA early_begin started on `slot` go on past its wait, to its
 * end. */
inline void early_end(const KOp &k, int slot)
{
	Worker *w = early_w[slot], *prev = t_w;
	const unsigned nt = k.b.x * k.b.y * k.b.z;
	t_w = w;
	w->hold = false;
	w->gbar.gen++;
	cta_loop(w, nt);
	free(w->smem);
	w->smem = nullptr;
	t_w = prev;
}

inline void run_op(emu_stream *s, emu_op x, std::deque<emu_op> *more)
{
	long skip = -1;  /* x's CTA started ahead (held at its wait), if any */
	int slot = 0;    /* the early worker holding it */
	while (x.k) {
		/* the PDL launch right behind this kernel, if any */
		emu_op y;
		if (more) {
			if (!more->empty() && more->front().k &&
			    more->front().k->pdl) {
				y = std::move(more->front());
				more->pop_front();
			}
		} else if (s) {
			y = s->take_pdl();
		}
		long j = -1;
		if (y.k) {
			const unsigned long ncta =
				(unsigned long)y.k->g.x * y.k->g.y;
			j = (long)(early_seq++ * 2654435761ul % ncta);
			early_begin(*y.k, (unsigned long)j, slot ^ 1);
		}
		exec_launch(*x.k, skip);
		if (skip >= 0)
			early_end(*x.k, slot);
		if (!y.k)
			return;
		x = std::move(y);
		skip = j;
		slot ^= 1;
	}
	x.f();
}

template <class... P> struct Launch {
	void (*k)(P...);
	dim3 g, b;
	size_t smem;
	cudaStream_t stream;
	bool pdl;
	template <class... A> cudaError_t operator()(A &&...args)
	{
		const unsigned nt = b.x * b.y * b.z;
		if (nt == 0 || nt > 1024 || b.y != 1 || b.z != 1 || g.z != 1 ||
		    g.y > 65535 || g.x == 0 || g.y == 0 || smem > 48 * 1024) {
			fprintf(stderr, "emu: bad launch %ux%u x %u, smem %zu\n",
				g.x, g.y, nt, smem);
			last_error = cudaErrorInvalidValue;
			return cudaErrorInvalidValue;
		}
		typedef std::tuple<std::decay_t<P>...> Params;
		struct State {
			void (*k)(P...);
			Params params;
		};
		/* the arguments are copied now, as a launch does */
		auto st = std::make_shared<State>(
			State{ k, Params(std::forward<A>(args)...) });
		/* each thread gets its own copy of the parameters */
		void (*body)(void *) = [](void *a) {
			State *s = (State *)a;
			Params local = s->params;
			call(s->k, local, std::index_sequence_for<P...>{});
		};
		/* EMU_CAPTURE_NO_PDL=1: a runtime that cannot capture PDL
		 * launches (the capture is invalidated) */
		if (pdl && stream && stream->cap) {
			const char *v = getenv("EMU_CAPTURE_NO_PDL");
			if (v && *v == '1' && !stream->cap_bad) {
				fprintf(stderr, "emu: a PDL launch during stream "
					"capture (EMU_CAPTURE_NO_PDL=1)\n");
				stream->cap_bad = true;
			}
		}
		enqueue_op(stream,
			   emu_op{ nullptr, std::make_shared<KOp>(KOp{
						    body, st, g, b, smem, pdl }) });
		return cudaSuccess;
	}
};

template <class... P>
inline Launch<P...> launcher(void (*k)(P...), dim3 g, dim3 b, size_t smem = 0,
			     cudaStream_t s = 0)
{
	return Launch<P...>{ k, g, b, smem, s, false };
}

} // namespace emu

inline emu_op emu_stream::take_pdl()
{
	std::lock_guard<std::mutex> lk(mu);
	emu_op y;
	if (!q.empty() && q.front().k && q.front().k->pdl) {
		y = std::move(q.front());
		q.pop_front();
	}
	return y;
}

/* cudaLaunchKernelEx with one attribute understood: programmatic stream
 * serialization (PDL); any other is refused, as a GPU without it would,
 * and with EMU_NO_PDL=1 that one too (cudaErrorNotSupported: a runtime
 * that refuses it). */
enum cudaLaunchAttributeID {
	cudaLaunchAttributeProgrammaticStreamSerialization = 6,
};
union cudaLaunchAttributeValue {
	char pad[64];
	unsigned char programmaticStreamSerializationAllowed;
};
struct cudaLaunchAttribute {
	cudaLaunchAttributeID id;
	char pad[8 - sizeof(cudaLaunchAttributeID)];
	cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
	dim3 gridDim;
	dim3 blockDim;
	size_t dynamicSmemBytes;
	cudaStream_t stream;
	cudaLaunchAttribute *attrs;
	unsigned int numAttrs;
};
template <class... P, class... A>
static inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *c,
					     void (*k)(P...), A &&...args)
{
	bool pdl = false;
	for (unsigned i = 0; i < c->numAttrs; i++) {
		if (c->attrs[i].id !=
		    cudaLaunchAttributeProgrammaticStreamSerialization)
			return cudaErrorInvalidValue;
		pdl = c->attrs[i].val.programmaticStreamSerializationAllowed;
	}
	const char *no = getenv("EMU_NO_PDL");
	if (pdl && no && *no == '1')
		return emu::last_error = cudaErrorNotSupported;
	return emu::Launch<P...>{ k, c->gridDim, c->blockDim,
				  c->dynamicSmemBytes, c->stream,
				  pdl }(std::forward<A>(args)...);
}

static inline void cudaGridDependencySynchronize(void) { emu::grid_wait(); }
static inline void cudaTriggerProgrammaticLaunchCompletion(void) {}

#define threadIdx (emu::t_w->cur->tid)
#define blockIdx (emu::t_w->bid)
#define blockDim (emu::t_w->bdim)
#define gridDim (emu::t_w->gdim)

static inline void __syncthreads(void) { emu::bar_wait(emu::t_w->bar); }

namespace emu {
/* The first statement of a kernel declared __launch_bounds__(n, ...)
 * (transform.py puts it there): a GPU will not launch such a kernel with
 * more than n threads a CTA (its registers were allotted for n), so
 * neither does the emulator. */
inline void launch_bound(long n, const char *kernel)
{
	const Worker *w = t_w;
	const unsigned long nt = (unsigned long)w->bdim.x * w->bdim.y *
				 w->bdim.z;
	if (nt > (unsigned long)n) {
		fprintf(stderr, "emu: %s launched with %lu threads a block, "
				"over its __launch_bounds__(%ld): a GPU refuses "
				"the launch (too many resources requested)\n",
			kernel, nt, n);
		abort();
	}
}
} // namespace emu

template <class T>
static inline T __shfl_sync(unsigned, T v, int src, int width = 32)
{
	const int lane = (int)(threadIdx.x & 31);
	return emu::warp_xchg(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
static inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32)
{
	const int lane = (int)(threadIdx.x & 31);
	int src = lane ^ mask;
	if ((src & ~(width - 1)) != (lane & ~(width - 1)))
		src = lane;
	return emu::warp_xchg(v, src);
}
static inline unsigned __reduce_max_sync(unsigned, unsigned v)
{
	unsigned m = v;
	for (int off = 16; off; off >>= 1) {
		unsigned o = __shfl_xor_sync(0xffffffffu, m, off);
		m = o > m ? o : m;
	}
	return m;
}

/* cp.async: copies are made when the issuing thread waits for their group */
static inline void __pipeline_memcpy_async(void *dst, const void *src,
					   size_t n, size_t = 0)
{
	if (((uintptr_t)src % n) || ((uintptr_t)dst % n)) {
		fprintf(stderr, "emu: cp.async of %zu misaligned\n", n);
		abort();
	}
	emu::t_w->cur->open.push_back(emu::Copy{ dst, src, n });
}
static inline void __pipeline_commit(void)
{
	emu::Fiber *f = emu::t_w->cur;
	f->groups.push_back(std::move(f->open));
	f->open.clear();
}
static inline void __pipeline_wait_prior(size_t n)
{
	emu::Fiber *f = emu::t_w->cur;
	while (f->groups.size() > n) {
		for (auto &c : f->groups.front())
			memcpy(c.dst, c.src, c.n);
		f->groups.erase(f->groups.begin());
	}
}

#endif
