/*
 * A model of nbd-mirror's replication protocol (two nodes, a witness), checked with spin.
 * model/README.md maps each step to the code. Every event is one atomic step; spin explores
 * every interleaving of client writes, link cuts, crashes, restarts, reconnects and resync
 * steps, bounded by MAXW writes and MAXF faults.
 *
 * Also modelled: a graceful leave (LEAVING: the survivor writes alone without the grant), a
 * disk replaced by an empty one (a brand-new copy: full sync; alone, the witness refuses it once
 * the cluster holds data; no copy that is incomplete ever becomes a source, reads alone or
 * writes alone), a new cluster whose first node starts alone and empty, resyncs cut short by
 * any fault.
 *
 * Abstractions (each covered elsewhere): a block's value is the id of the write that last
 * changed it; everything a node does is durable when it does it (power loss: issue 14's
 * harness); two writes to one block are never in flight together (one client at a time, as a
 * VM that moves between nodes: the overlap rule for concurrent writers is property-tested in
 * test/replication/in-flight.test.ts); a resync copy of a block is one step (the tracker orders
 * it against writes to that block).
 */
#define B 2          /* blocks */
#ifndef MAXW
#define MAXW 4       /* client writes */
#endif
#ifndef MAXF
#define MAXF 3       /* faults: link cuts + crashes */
#endif
#define NONE 2       /* no node */
#define EMPTY 9      /* what a replaced (new, empty) disk holds: no write's value */
#define IDX(n, b) ((n) * B + (b))
#define PEER(n) (1 - (n))

mtype = { UpToDate, Inconsistent };
mtype = { Idle, Mirroring };

byte data[2 * B];
bool dirty[2 * B];
byte cur[2];          /* generation: current id */
byte bm[2];           /* generation: bitmap id (0: not tracking) */
mtype disk[2] = UpToDate;
bool alive[2] = 1;
bool link = 1;        /* connected and decided */
bool peerLeft[2];     /* this node's peer said LEAVING: it writes alone without the grant */
byte holder = NONE;   /* the witness's write grant */
bool hasData;         /* the witness knows the cluster holds data: set by a grant or a release, never cleared */
byte nextGen = 2;

/* the one client write in flight */
mtype wstep = Idle;
byte wn; byte wb; byte wv;
bool localDone; bool peerDone;
byte writes = 0;
byte faults = 0;

/* resync */
bool resyncing = 0;
byte src; byte tgt;

/* activity log: a node that crashes with a mirrored write in flight finds it on restart */
byte alog[2];         /* block + 1, or 0 */

/* ghosts for the invariants */
byte acked[B];        /* value of the last acknowledged write per block */
bool uncertain[B];    /* a write to the block ended unacknowledged after it: either value may be there */
bool wroteAlone[2];   /* acknowledged a write without its peer since the pair was last in sync */

inline startTracking(n) {
  if
  :: bm[n] == 0 -> bm[n] = cur[n]; cur[n] = nextGen; nextGen++
  :: else -> skip
  fi
}

/* Connected, no bits, nothing running: both copies are the same. */
#define IN_SYNC (link && !resyncing && !dirty[0] && !dirty[1] && !dirty[2] && !dirty[3] && wstep == Idle)

/* A new node: a replaced disk never synced with anything (generation.ts: Inconsistent, no bitmap, no history). */
#define BRAND_NEW(n) (disk[n] == Inconsistent && cur[n] == 0)

/* An incomplete copy that is not new: a resync into it was cut short (mirrored-volume.ts stale). */
#define STALE(n) (disk[n] == Inconsistent && !BRAND_NEW(n))

/* The witness's rule for a brand-new copy (claim body brandNew, witness-server.ts): refused once
   the cluster holds data, even if it holds the grant (from before its disk was replaced). */
#ifdef MUTANT_BRAND_NEW_ALONE
#define NEW_COPY_OK(n) 1
#else
#define NEW_COPY_OK(n) (!(BRAND_NEW(n) && hasData))
#endif

/* Node n, without its peer, claims the grant (quorum.ts claim): granted if it is free or n's and
   the rule above allows; every grant marks the cluster as holding data. */
inline witnessGrants(n, ok) {
  ok = 0;
  if
  :: (holder == NONE || holder == n) && NEW_COPY_OK(n) -> holder = n; hasData = 1; ok = 1
  :: else -> skip
  fi
}

/* May node n go on without its peer? The peer said it was leaving (quorum.ts: alone, nothing
   asked), or the witness grants it. */
inline mayGoAlone(n, ok) {
  if
  :: peerLeft[n] -> ok = 1
  :: else -> witnessGrants(n, ok)
  fi
}

/* May node n write without its peer? As mayGoAlone; never an incomplete copy (mirrored-volume.ts
   refusesWritesAlone). A brand-new copy written alone holds the only copy: UpToDate
   (mirrored-volume.ts startTracking). */
inline mayWriteAlone(n, ok) {
  ok = 0;
  if
#ifdef MUTANT_NO_WITNESS
  :: !STALE(n) -> ok = 1
#else
  :: !STALE(n) -> mayGoAlone(n, ok)
#endif
  :: else -> skip
  fi;
  if :: ok && BRAND_NEW(n) -> disk[n] = UpToDate :: else -> skip fi
}

/* A write waiting for the peer when the link went: bits first, then acknowledged alone with quorum. */
inline degradeWrite() {
#ifndef MUTANT_NO_BITS_ON_LINK_LOSS
  dirty[IDX(wn, wb)] = 1;
#endif
  mayWriteAlone(wn, ok);
  if
  :: ok -> startTracking(wn); wroteAlone[wn] = 1;
           data[IDX(wn, wb)] = wv; acked[wb] = wv; uncertain[wb] = 0
  :: else -> uncertain[wb] = 1
  fi;
  alog[wn] = 0; /* the write is over: its extent leaves the activity log */
  wstep = Idle
}

inline loseLink() {
  link = 0;
  resyncing = 0;
  if
  :: wstep == Mirroring && alive[wn] -> degradeWrite()
  :: else -> skip
  fi
}

/* May node n serve a read of block b, and from which copy? (quorum gate + resync target reads) */
inline checkRead(n, b) {
  if
  :: link && resyncing && tgt == n && dirty[IDX(n, b)] -> assert(uncertain[b] || data[IDX(src, b)] == acked[b])
  :: link && !(resyncing && tgt == n && dirty[IDX(n, b)]) -> assert(uncertain[b] || data[IDX(n, b)] == acked[b])
  /* alone: with the grant, which a node asks for again after each restart before it serves
     (the same answer for its holder, unless its copy is now brand new) */
  :: !link && (peerLeft[n] || (holder == n && NEW_COPY_OK(n))) && !(disk[n] == Inconsistent && dirty[IDX(n, b)]) -> assert(uncertain[b] || data[IDX(n, b)] == acked[b])
  :: else -> skip /* held or refused: no data served */
  fi
}

active proctype world() {
  byte n; byte b; bool ok; byte s; byte t;
  if
  /* a pair in sync with data; its first in-sync after start told the witness (a release:
     quorum.ts grantFromBefore) */
  :: cur[0] = 1; cur[1] = 1; hasData = 1
  /* a new cluster: both disks new and empty, nothing recorded at the witness; its first node
     starts alone, the other later (down at first: counted as one fault, which keeps the
     search small; both starting together is the in-sync start above) */
  :: disk[0] = Inconsistent; disk[1] = Inconsistent; link = 0; alive[1] = 0; faults = 1;
     data[0] = EMPTY; data[1] = EMPTY; data[2] = EMPTY; data[3] = EMPTY; acked[0] = EMPTY; acked[1] = EMPTY
  fi;
  do
  /* a client starts a write through node n */
  :: atomic { wstep == Idle && writes < MAXW ->
       select(n : 0 .. 1); select(b : 0 .. B - 1);
       if
       :: alive[n] ->
            writes++; wn = n; wb = b; wv = writes;
            if
            :: link -> wstep = Mirroring; localDone = 0; peerDone = 0; alog[n] = b + 1
            :: else ->
                 mayWriteAlone(n, ok);
                 if
                 :: ok -> dirty[IDX(n, b)] = 1; startTracking(n); wroteAlone[n] = 1;
                          data[IDX(n, b)] = wv; acked[b] = wv; uncertain[b] = 0
                 :: else -> skip /* refused before anything changed */
                 fi
            fi
       :: else -> skip
       fi }
  /* its local write lands */
  :: atomic { wstep == Mirroring && !localDone && alive[wn] -> data[IDX(wn, wb)] = wv; localDone = 1 }
  /* the peer applies it */
  :: atomic { wstep == Mirroring && !peerDone && link -> data[IDX(PEER(wn), wb)] = wv; peerDone = 1 }
  /* both done: acknowledged */
  :: atomic { wstep == Mirroring && localDone && peerDone && link && alive[wn] ->
       acked[wb] = wv; uncertain[wb] = 0; alog[wn] = 0; wstep = Idle }
  /* the link is cut */
  :: atomic { link && faults < MAXF -> faults++; loseLink() }
  /* node n crashes (kill -9) */
  :: atomic { faults < MAXF -> select(n : 0 .. 1);
       if
       :: alive[n] -> faults++; alive[n] = 0; peerLeft[n] = 0;
            if
            :: wstep == Mirroring && wn == n -> uncertain[wb] = 1; wstep = Idle
            :: else -> skip
            fi;
            if :: link -> loseLink() :: else -> resyncing = 0 fi
       :: else -> skip
       fi }
  /* node n stops gracefully (LEAVING): requests in flight finish, its data is flushed, its log
     emptied, a grant it holds goes back first (quorum.ts giveBack); the peer goes on alone
     without asking (last man standing) and tells the witness (a claim), so the leaver cannot
     later write alone with its old copy */
  :: atomic { link && wstep == Idle && faults < MAXF -> select(n : 0 .. 1);
       /* in sync when it left (the in-sync step may not have run yet): nobody wrote alone since */
       if :: IN_SYNC -> wroteAlone[0] = 0; wroteAlone[1] = 0 :: else -> skip fi;
       faults++; alive[n] = 0; link = 0; resyncing = 0; alog[n] = 0;
#ifndef MUTANT_LEAVE_KEEPS_GRANT
       if :: holder == n -> holder = NONE :: else -> skip fi;
#endif
       hasData = 1; /* the leaver's release (its copy is not new: it was connected) */
       peerLeft[PEER(n)] = 1;
#ifndef MUTANT_LEAVE_NO_CLAIM
       if :: holder == NONE -> holder = PEER(n) :: else -> skip fi;
#endif
       skip }
  /* node n, down, gets a new empty disk (an operator replaces a broken one) — only while its
     peer's copy holds every acknowledged write: else the data is gone with the disk, which no
     protocol can help */
  :: atomic { faults < MAXF -> select(n : 0 .. 1);
       if
       :: !alive[n] && (uncertain[0] || data[IDX(PEER(n), 0)] == acked[0]) && (uncertain[1] || data[IDX(PEER(n), 1)] == acked[1]) ->
            /* no bits (as in the code): alone, only the witness keeps it from serving */
            faults++; data[IDX(n, 0)] = EMPTY; data[IDX(n, 1)] = EMPTY;
            disk[n] = Inconsistent; cur[n] = 0; bm[n] = 0; alog[n] = 0; dirty[IDX(n, 0)] = 0; dirty[IDX(n, 1)] = 0
       :: else -> skip
       fi }
  /* node n restarts: its activity log marks what may differ */
  :: atomic { select(n : 0 .. 1);
       if
       :: !alive[n] -> alive[n] = 1;
#ifndef MUTANT_NO_ACTIVITY_LOG
            if :: alog[n] > 0 -> dirty[IDX(n, alog[n] - 1)] = 1; alog[n] = 0 :: else -> skip fi
#endif
       :: else -> skip
       fi }
  /* both alive, the link comes up: decide by generations (generation.ts decide) */
  :: atomic { alive[0] && alive[1] && !link && wstep == Idle ->
       s = NONE; t = 0; /* t: 1 for a full sync */
       if
       :: BRAND_NEW(0) && !BRAND_NEW(1) -> s = 1; t = 1
       :: BRAND_NEW(1) && !BRAND_NEW(0) -> s = 0; t = 1
       :: BRAND_NEW(0) && BRAND_NEW(1) -> s = NONE /* two new copies: identical by definition (decide: initial) */
       :: !BRAND_NEW(0) && !BRAND_NEW(1) && cur[0] == cur[1] ->
            /* in sync; bits from a crash: the consistent side, else the first by name */
            if
            :: disk[0] == Inconsistent && disk[1] != Inconsistent -> s = 1
            :: else -> s = 0
            fi
       :: !BRAND_NEW(0) && !BRAND_NEW(1) && cur[0] != cur[1] && bm[0] != 0 && bm[0] == cur[1] && !(bm[1] != 0 && bm[1] == cur[0]) -> s = 0
       :: !BRAND_NEW(0) && !BRAND_NEW(1) && cur[0] != cur[1] && bm[1] != 0 && bm[1] == cur[0] && !(bm[0] != 0 && bm[0] == cur[1]) -> s = 1
       :: else -> assert(0) /* split brain or unrelated copies: the witness must have prevented it */
       fi;
       if
       :: s == NONE ->
            /* both UpToDate with one generation; their first in-sync tells the witness (a
               release), here one step with the meeting (the witness always answers here) */
            disk[0] = UpToDate; disk[1] = UpToDate; cur[0] = nextGen; cur[1] = nextGen; nextGen++;
            link = 1; peerLeft[0] = 0; peerLeft[1] = 0; hasData = 1
#ifndef MUTANT_NO_CONSISTENT_SOURCE
       /* the copy the generations name is incomplete (a resync into it was cut short, and its
          source is gone: replaced): nothing is copied either way (decide: no-consistent-source) */
       :: s != NONE && disk[s] == Inconsistent -> skip
#endif
       :: else ->
            /* never sync from an incomplete copy */
            assert(disk[s] != Inconsistent);
            link = 1; peerLeft[0] = 0; peerLeft[1] = 0;
            src = s; tgt = PEER(s);
#ifndef MUTANT_NO_FULL_SYNC
            /* a full sync: every block of the new copy */
            if :: t -> dirty[IDX(tgt, 0)] = 1; dirty[IDX(tgt, 1)] = 1 :: else -> skip fi;
#endif
            /* the target takes the source's generation at once, staying Inconsistent (cluster-node.ts
               'full'): no longer new, so a full sync cut short leaves a partial copy, never one
               that the witness would treat as a new cluster's */
            if :: t -> cur[tgt] = cur[src] :: else -> skip fi;
            for (b : 0 .. B - 1) {
              if :: dirty[IDX(0, b)] || dirty[IDX(1, b)] -> dirty[IDX(0, b)] = 1; dirty[IDX(1, b)] = 1 :: else -> skip fi
            }
            if
            :: dirty[IDX(0, 0)] || dirty[IDX(0, 1)] || cur[0] != cur[1] -> resyncing = 1; disk[tgt] = Inconsistent
            :: else -> skip
            fi
       fi }
  /* resync copies one dirty block, in its place among writes: never while a write to the block
     is in flight (in-flight.ts orders the copy before it on both nodes, or after it on both) */
  :: atomic { resyncing && link -> select(b : 0 .. B - 1);
       if
#ifdef MUTANT_NO_OVERLAP_ORDER
       :: dirty[IDX(tgt, b)] ->
#else
       :: dirty[IDX(tgt, b)] && !(wstep == Mirroring && wb == b) ->
#endif
            data[IDX(tgt, b)] = data[IDX(src, b)]; dirty[IDX(tgt, b)] = 0; dirty[IDX(src, b)] = 0
       :: else -> skip
       fi }
  /* resync done: the target takes the source's generation, both stop tracking, the grant goes back */
  :: atomic { resyncing && link && !dirty[IDX(tgt, 0)] && !dirty[IDX(tgt, 1)] ->
       resyncing = 0; disk[tgt] = UpToDate; cur[tgt] = cur[src]; bm[0] = 0; bm[1] = 0;
       /* the target holds everything the source wrote alone: a new episode starts */
       wroteAlone[0] = 0; wroteAlone[1] = 0 }
  /* in sync (connected, no bits, nothing running): the grant goes back, nobody has written alone */
  :: atomic { IN_SYNC ->
       assert(data[0] == data[2] && data[1] == data[3]); /* both copies identical */
       holder = NONE; hasData = 1; wroteAlone[0] = 0; wroteAlone[1] = 0 }
  /* a client reads block b through node n */
  :: atomic { wstep == Idle -> select(n : 0 .. 1); select(b : 0 .. B - 1);
       if :: alive[n] -> checkRead(n, b) :: else -> skip fi }
  /* at most one node writes without its peer */
  :: atomic { assert(!(wroteAlone[0] && wroteAlone[1])) }
  od
}
