/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The session fence (rcolo_fence): one descriptor on channel 0 naming the
 * last descriptor sent on every channel, one acknowledgement from the
 * secondary's library once all of them are released.  A fence of every
 * channel instead needs every receive thread to wake up, which costs more
 * than the round trip wherever threads outnumber CPUs.
 *
 * Primary: rcolo_fence posts it and waits on every channel's CQ.
 * Secondary: receive.c hands the fence here (rcolo_sfence_install) and
 * asks, after each release that leaves a channel holding nothing, whether
 * it may now ack it (rcolo_sfence_claim); see struct rcolo_sfence_rx.
 */
#include <errno.h>
#include <stdio.h>

#include "internal.h"

/* ------------------------------------------------------ secondary */

/*
 * A session fence arrived on channel 0: check it and install it (see
 * struct rcolo_sfence_rx).  Returns 0 or the session's error.
 */
int rcolo_sfence_install(struct rcolo_channel *ch,
                         const struct rcolo_desc_view *v)
{
    struct rcolo_session *s = ch->s;
    uint64_t target[RCOLO_MAX_CHANNELS];
    char detail[96];

    if (ch->index != 0 || v->n != s->channels) {
        snprintf(detail, sizeof(detail), " (on channel %u, for %u channels)",
                 ch->index, v->n);
        return rcolo_chan_fail(ch, -EPROTO, "malformed session fence", detail);
    }
    rcolo_desc_entries(v, target);
    /* Its own channel's entry is exact: the descriptor just before it. */
    if (target[0] != v->seq - 1) {
        return rcolo_chan_fail(ch, -EPROTO,
                               "session fence names the wrong last "
                               "descriptor of its own channel",
                               NULL);
    }
    if (__atomic_load_n(&s->sfence_rx.pending, __ATOMIC_SEQ_CST)) {
        return rcolo_chan_fail(ch, -EPROTO,
                               "session fence while one is unanswered", NULL);
    }
    /* Relaxed atomics: a thread that read the last fence's seq may still
     * read these; its compare-and-swap then fails. */
    for (unsigned i = 0; i < v->n; i++) {
        __atomic_store_n(&s->sfence_rx.target[i], target[i], __ATOMIC_RELAXED);
    }
    __atomic_store_n(&s->sfence_rx.pending, v->seq, __ATOMIC_SEQ_CST);
    rcolo_stat_add(&ch->stats.fences, 1);
    return 0;
}

/*
 * After a release left this channel holding nothing: the session fence's
 * seq if every channel has now released what it names and this thread won
 * the right to ack it, else 0.
 */
uint64_t rcolo_sfence_claim(struct rcolo_session *s)
{
    uint64_t seq = __atomic_load_n(&s->sfence_rx.pending, __ATOMIC_SEQ_CST);

    if (!seq) {
        return 0;
    }
    for (unsigned i = 0; i < s->channels; i++) {
        struct rcolo_channel *c =
            __atomic_load_n(&s->chan[i], __ATOMIC_ACQUIRE);
        uint64_t done =
            c ? __atomic_load_n(&c->rx.done_seq, __ATOMIC_SEQ_CST) : 0;

        if (done < __atomic_load_n(&s->sfence_rx.target[i], __ATOMIC_RELAXED)) {
            return 0; /* that channel's release will look again */
        }
    }
    return __atomic_compare_exchange_n(&s->sfence_rx.pending, &seq, 0, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)
               ? seq
               : 0;
}

/* -------------------------------------------------------- primary */

/*
 * The fence covers the channels established when it starts: another
 * thread may still be connecting one, which has sent nothing yet and has
 * no CQ to wait on.
 */
struct sfence_wait {
    struct rcolo_session *s;
    unsigned n;
    struct rcolo_channel *ch[RCOLO_MAX_CHANNELS];
};

static int sfence_progress(void *opaque)
{
    struct sfence_wait *w = opaque;
    int found = 0;

    for (unsigned i = 0; i < w->n; i++) {
        int n = rcolo_chan_progress(w->ch[i]);
        if (n < 0) {
            return n;
        }
        found += n;
    }
    return found;
}

static int sfence_sleep(void *opaque, int64_t deadline)
{
    struct sfence_wait *w = opaque;
    struct rcolo_qp_res *res[RCOLO_MAX_CHANNELS];

    for (unsigned i = 0; i < w->n; i++) {
        ibv_req_notify_cq(w->ch[i]->res.cq, 0);
        res[i] = &w->ch[i]->res;
    }
    /* Look once more: a completion may have raced with arming. */
    int found = sfence_progress(w);
    if (found != 0) {
        return found < 0 ? found : 0;
    }
    return rcolo_cqs_sleep(res, w->n, &w->s->core, deadline);
}

static const struct rcolo_wait_ops sfence_wait_ops = {
    .poll = sfence_progress,
    .block = sfence_sleep,
};

static bool sfence_acked(void *arg)
{
    struct rcolo_session *s = arg;

    return rcolo_fence_tx_idle(&s->sfence_tx);
}

/* Post the session fence on channel 0 (w->ch[0]), naming the last
 * descriptor of every established channel (0: none, or not established). */
static int sfence_post(struct sfence_wait *w)
{
    struct rcolo_session *s = w->s;
    struct rcolo_channel *ch = w->ch[0];
    uint64_t last[RCOLO_MAX_CHANNELS] = {0};
    int slot;
    int ret = 0;

    /* Batched pages first: the fence names their descriptors. */
    for (unsigned i = 1; !ret && i < w->n; i++) {
        ret = rcolo_chan_flush_desc(w->ch[i]);
    }
    if (!ret) {
        ret = rcolo_chan_control_slot(ch, &slot);
    }
    if (ret) {
        return ret;
    }
    for (unsigned i = 0; i < w->n; i++) {
        last[w->ch[i]->index] = w->ch[i]->tx.seq;
    }
    size_t len = rcolo_desc_encode(
        rcolo_slot_buf(&ch->send, (uint32_t)slot), ch->send.size,
        RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER | RCOLO_DESC_FLAG_ALL,
        0, ++ch->tx.seq, last, s->channels, NULL, 0);
    ret = rcolo_chan_post_send(ch, (uint32_t)slot, (uint32_t)len, ch->tx.wrs,
                               ch->tx.sges, 0);
    if (ret) {
        return ret;
    }
    rcolo_fence_tx_post(&s->sfence_tx, ch->tx.seq);
    rcolo_stat_add(&ch->stats.fences, 1);
    return 0;
}

int rcolo_fence(struct rcolo_session *s, int timeout_ms)
{
    int64_t t0 = rcolo_now_ns();
    int64_t mine = rcolo_deadline(timeout_ms);
    int64_t owed = rcolo_owed_deadline(&s->core);
    bool owed_first = mine < 0 || owed < mine;
    struct sfence_wait w = {.s = s};
    int ret;

    if (s->role != RCOLO_PRIMARY || !rcolo_fence_tx_idle(&s->sfence_tx)) {
        return -EINVAL;
    }
    ret = rcolo_status(&s->core);
    if (ret) {
        return ret;
    }
    pthread_mutex_lock(&s->core.lock);
    for (unsigned i = 0; i < s->channels; i++) {
        if (s->chan[i] && s->chan[i]->state == RCOLO_CHAN_ESTABLISHED) {
            w.ch[w.n++] = s->chan[i];
        }
    }
    pthread_mutex_unlock(&s->core.lock);
    if (!w.n || w.ch[0]->index != 0) {
        return -ENOTCONN; /* the fence goes on channel 0 */
    }
    ret = sfence_post(&w);
    if (!ret) {
        ret = rcolo_wait(&s->core, &sfence_wait_ops, &w, sfence_acked, s,
                         owed_first ? owed : mine, RCOLO_FENCE_SPIN_NS);
        rcolo_chan_note_owed_wait(w.ch[0], t0);
    }
    if (ret == -ETIMEDOUT && owed_first) {
        return rcolo_chan_stalled(w.ch[0], "acknowledged no session fence");
    }
    if (ret) {
        return ret;
    }
    uint64_t dt = (uint64_t)(rcolo_now_ns() - t0);
    pthread_mutex_lock(&s->core.lock);
    s->stats.fences++;
    s->stats.fence_ns_total += dt;
    s->stats.fence_ns_last = dt;
    if (dt > s->stats.fence_ns_max) {
        s->stats.fence_ns_max = dt;
    }
    pthread_mutex_unlock(&s->core.lock);
    return 0;
}
