package postgres

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cloudvlan/cloudvlan/controller/internal/store/internal/sqlcore"
)

// listener holds one connection in LISTEN and turns notifications into Notifier wake-ups.
type listener struct {
	cancel context.CancelFunc
	done   chan struct{}
	ready  chan struct{}
}

func startListener(cfg *pgx.ConnConfig, n *sqlcore.Notifier, log *slog.Logger) *listener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{cancel: cancel, done: make(chan struct{}), ready: make(chan struct{})}
	go l.loop(ctx, cfg.Copy(), n, log)
	return l
}

func (l *listener) stop() {
	l.cancel()
	<-l.done
}

func (l *listener) loop(ctx context.Context, cfg *pgx.ConnConfig, n *sqlcore.Notifier, log *slog.Logger) {
	defer close(l.done)
	var once sync.Once
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := l.listen(ctx, cfg, func() {
			once.Do(func() { close(l.ready) })
			backoff = 100 * time.Millisecond
			// Commits may have happened while we were not listening: wake everyone to re-read.
			n.Notify()
		}, n)
		if ctx.Err() != nil {
			return
		}
		log.WarnContext(ctx, "change-feed listener lost its connection; reconnecting", "store", "postgres", "err", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (l *listener) listen(ctx context.Context, cfg *pgx.ConnConfig, listening func(), n *sqlcore.Notifier) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn.Close(cctx)
		cancel()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return err
	}
	listening()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		n.Notify()
	}
}
