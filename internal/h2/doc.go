// Package h2 turns the kernel's HTTP/2 records (events.KindH2: header block fragments, DATA and
// RST_STREAM frame headers, a connection's end) into the request events HTTP/1 produces
// (events.KindReqEnd, one a stream), so that the aggregator and the exporters count HTTP/2 like
// HTTP/1. It is a package of its own because HPACK decoding (golang.org/x/net/http2/hpack) keeps
// per connection state that belongs neither to the kernel side nor to the aggregator; it uses
// internal/events and nothing above it.
package h2
