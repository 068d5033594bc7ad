/*
 * cuda_emu_graph.h - CUDA graphs by stream capture, for the CPU emulation
 * of cuda_emu.h (which includes this file): cudaStreamBeginCapture makes
 * the stream record what is queued on it (launches with their arguments as
 * they were at the call, async copies, cuBLAS calls, event records) instead
 * of running it; cudaStreamEndCapture hands the record over as a graph;
 * cudaGraphInstantiate copies it; cudaGraphLaunch queues the whole record
 * on a stream, to run in order, as often as it is launched.
 *
 * Checked as CUDA does: a call that waits for the device from the
 * capturing thread (cudaStreamSynchronize, cudaMemcpy, cudaMemset,
 * cudaFree: emu::capture_violation in cuda_emu.h) fails and invalidates
 * the capture, and cudaStreamEndCapture then answers
 * cudaErrorStreamCaptureInvalidated. Any mode is taken as relaxed; only one
 * capture per thread.
 */
#ifndef CUDA_EMU_GRAPH_H
#define CUDA_EMU_GRAPH_H

#include <functional>
#include <vector>

static constexpr cudaError_t cudaErrorStreamCaptureUnsupported = (cudaError_t)900;
static constexpr cudaError_t cudaErrorStreamCaptureInvalidated = (cudaError_t)901;

enum cudaStreamCaptureMode {
	cudaStreamCaptureModeGlobal = 0,
	cudaStreamCaptureModeThreadLocal = 1,
	cudaStreamCaptureModeRelaxed = 2,
};

struct emu_graph {
	std::vector<emu_op> ops;
};
typedef emu_graph *cudaGraph_t;
typedef emu_graph *cudaGraphExec_t;

static inline cudaError_t cudaStreamBeginCapture(cudaStream_t s,
						 cudaStreamCaptureMode)
{
	if (!s || s->cap || emu::capturing)
		return cudaErrorInvalidValue; /* the legacy stream cannot */
	s->cap = new std::vector<emu_op>();
	s->cap_bad = false;
	emu::capturing = s;
	return cudaSuccess;
}

static inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
	if (!s || !s->cap || !g)
		return cudaErrorInvalidValue;
	std::vector<emu_op> *ops = s->cap;
	bool bad = s->cap_bad;
	s->cap = nullptr;
	s->cap_bad = false;
	if (emu::capturing == s)
		emu::capturing = nullptr;
	*g = nullptr;
	if (bad) {
		delete ops;
		return cudaErrorStreamCaptureInvalidated;
	}
	*g = new emu_graph{ std::move(*ops) };
	delete ops;
	return cudaSuccess;
}

typedef void *cudaGraphNode_t;

/* The count only (nodes must be NULL): what was recorded, one node each. */
static inline cudaError_t cudaGraphGetNodes(cudaGraph_t g, cudaGraphNode_t *nodes,
					    size_t *n)
{
	if (!g || nodes || !n)
		return cudaErrorInvalidValue;
	*n = g->ops.size();
	return cudaSuccess;
}

static inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x,
					       cudaGraph_t g,
					       unsigned long long flags = 0)
{
	if (!x || !g || flags)
		return cudaErrorInvalidValue;
	*x = new emu_graph(*g);
	return cudaSuccess;
}

static inline cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t s)
{
	if (!x)
		return cudaErrorInvalidValue;
	/* in order; a PDL launch after a kernel is paired with it as on a
	 * stream (emu::run_op) */
	emu::enqueue(s, [x] {
		std::deque<emu_op> more(x->ops.begin(), x->ops.end());
		while (!more.empty()) {
			emu_op o = std::move(more.front());
			more.pop_front();
			emu::run_op(nullptr, std::move(o), &more);
		}
	});
	return cudaSuccess;
}

static inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x)
{
	emu::sync_all(); /* a launch still queued runs it */
	delete x;
	return cudaSuccess;
}

static inline cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
	delete g;
	return cudaSuccess;
}

#endif /* CUDA_EMU_GRAPH_H */
