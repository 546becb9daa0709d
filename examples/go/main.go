// Command digits-client sends one digits query and its feedback to a running
// mesh and prints the answer as one JSON line.
//
//	digits-client -target 127.0.0.1:1337 -values 0,0,5,13,9,1,0,0,...
//
// The feedback's label is -label when given, else the predicted digit.
// -tls-ca dials with TLS (-tls-cert and -tls-key: a client certificate, for mTLS).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "clipper-mesh/examples/go/gen/clipper/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:1337", "frontend address")
	app := flag.String("app", "digits", "application")
	values := flag.String("values", "", "64 comma-separated pixel values")
	label := flag.String("label", "", "true digit for the feedback (default: the predicted one)")
	contextKey := flag.String("context", "", "context key (a user id)")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	tlsCA := flag.String("tls-ca", "", "dial with TLS, trusting this PEM CA")
	tlsCert := flag.String("tls-cert", "", "PEM client certificate (mTLS)")
	tlsKey := flag.String("tls-key", "", "PEM key of -tls-cert")
	flag.Parse()

	input, err := float32Tensor(*values)
	if err != nil {
		fail(err)
	}
	creds, err := transportCredentials(*tlsCA, *tlsCert, *tlsKey)
	if err != nil {
		fail(err)
	}
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(creds))
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	client := pb.NewFrontendClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	reply, err := client.Predict(ctx, &pb.PredictRequest{
		Application: *app, Input: input, ContextKey: *contextKey,
	})
	if err != nil {
		fail(err)
	}
	output, err := decode(reply.GetOutput())
	if err != nil {
		fail(err)
	}

	truth := reply.GetOutput() // the predicted digit, unless told the true one
	if *label != "" {
		digit, err := strconv.ParseInt(*label, 10, 64)
		if err != nil {
			fail(fmt.Errorf("-label: %w", err))
		}
		truth = &pb.Tensor{Dtype: "int64", Raw: binary.LittleEndian.AppendUint64(nil, uint64(digit))}
	}
	ctx, cancel = context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	scored, err := client.Feedback(ctx, &pb.FeedbackRequest{
		Application: *app, ContextKey: *contextKey, QueryId: reply.GetQueryId(), Label: truth,
	})
	if err != nil {
		fail(err)
	}

	line, _ := json.Marshal(map[string]any{
		"client":          "go",
		"query_id":        reply.GetQueryId(),
		"output":          output,
		"default_used":    reply.GetDefaultUsed(),
		"models":          nonNil(reply.GetModels()),
		"feedback_models": nonNil(scored.GetModels()),
	})
	fmt.Println(string(line))
}

// transportCredentials is plaintext without a CA, else TLS trusting that CA and,
// with a certificate and key, presenting them (mTLS).
func transportCredentials(ca, cert, key string) (credentials.TransportCredentials, error) {
	if ca == "" {
		return insecure.NewCredentials(), nil
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("-tls-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-tls-ca %s: no PEM certificate in it", ca)
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != "" || key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

// float32Tensor encodes comma-separated numbers as a float32 vector: raw
// little-endian bytes, shape [n].
func float32Tensor(csv string) (*pb.Tensor, error) {
	fields := strings.Split(csv, ",")
	raw := make([]byte, 0, 4*len(fields))
	for _, f := range fields {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 32)
		if err != nil {
			return nil, fmt.Errorf("-values: %w", err)
		}
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(float32(v)))
	}
	return &pb.Tensor{Dtype: "float32", Shape: []int64{int64(len(fields))}, Raw: raw}, nil
}

// decode returns a numeric tensor's values: a scalar for shape [], else a flat list.
func decode(t *pb.Tensor) (any, error) {
	sizes := map[string]int{"int32": 4, "int64": 8, "float32": 4, "float64": 8}
	size, ok := sizes[t.GetDtype()]
	if !ok {
		return nil, fmt.Errorf("output dtype %q: this example decodes only %v", t.GetDtype(), sizes)
	}
	raw := t.GetRaw()
	if len(raw)%size != 0 {
		return nil, fmt.Errorf("output of %d bytes is not a whole number of %s", len(raw), t.GetDtype())
	}
	values := make([]any, 0, len(raw)/size)
	for i := 0; i < len(raw); i += size {
		switch t.GetDtype() {
		case "int32":
			values = append(values, int32(binary.LittleEndian.Uint32(raw[i:])))
		case "int64":
			values = append(values, int64(binary.LittleEndian.Uint64(raw[i:])))
		case "float32":
			values = append(values, math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
		case "float64":
			values = append(values, math.Float64frombits(binary.LittleEndian.Uint64(raw[i:])))
		}
	}
	if len(t.GetShape()) == 0 && len(values) == 1 {
		return values[0], nil
	}
	return values, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func fail(err error) {
	if s, ok := status.FromError(err); ok {
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", codeName(s.Code().String()), s.Message())
	} else {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
	}
	os.Exit(1)
}

// codeName spells a status code as in the proto ("InvalidArgument" -> "INVALID_ARGUMENT").
func codeName(camel string) string {
	var b strings.Builder
	for i, r := range camel {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}
