// A static test program for the local node's own tests, the only file of a
// test image built without a registry:
//
//	netcheck serve ADDR   answers every HTTP request with "netcheck <hostname>"
//	                      and logs one line per request to stdout
//	netcheck get URL      fetches URL (10 s timeout), prints the body, and
//	                      exits non-zero unless the status is 200
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: netcheck serve ADDR | netcheck get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		fmt.Printf("netcheck listening on %s\n", os.Args[2])
		err := http.ListenAndServe(os.Args[2], http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Printf("netcheck %s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
			fmt.Fprintf(w, "netcheck %s\n", host)
		}))
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	case "get":
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		fmt.Print(string(body))
		if resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, resp.Status)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: netcheck serve ADDR | netcheck get URL")
		os.Exit(2)
	}
}
