package redisfwd

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// RouteLogs sends go-redis's package-level logger through logger, process-wide. Without it
// go-redis prints its own lines on stderr ("redis: 2006/01/02 ... failed to dial"), which
// breaks --log-format json and repeats what the forwarder already logs as one warning per
// failed forward; so its lines go out at debug level.
func RouteLogs(logger *slog.Logger) { redis.SetLogger(redisLogger{logger}) }

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(strings.TrimSpace(fmt.Sprintf(format, v...)), "redis: ")
	l.log.DebugContext(ctx, msg, "component", "go-redis")
}
