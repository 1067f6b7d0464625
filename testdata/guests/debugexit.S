/*
 * debugexit: a guest that stops the VM through QEMU's isa-debug-exit
 * device at I/O port 0x501, with which QEMU exits with status (v<<1)|1
 * for the value v written.
 *
 * An ELF64 kernel, entered in 64-bit long mode with RSI = the Linux zero
 * page; it reads its command line from the zero page (cmd_line_ptr), as a
 * kernel built for Firecracker would, and not capsule's boot info. It
 *   1. prints "debugexit: writing to port 0x501\n" on COM1 (port 0x3f8),
 *   2. writes v, the N of the last whitespace-separated token "exit=N" on
 *      the command line (N decimal, 0-255; malformed tokens are ignored;
 *      default 1), to port 0x501 as a 32-bit OUT (out dx, eax),
 *   3. if the VM still runs (no such device), prints "debugexit: port
 *      0x501 did not stop the VM\n" and writes 2 to port 0xf4 (capsule's
 *      exit port): an even status, which (v<<1)|1 never is,
 *   4. halts with interrupts off, forever.
 *
 * Build (hello.ld puts everything in one PT_LOAD at 1 MiB):
 *   gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld \
 *       -Wl,--build-id=none -o testdata/guests/debugexit.elf testdata/guests/debugexit.S
 *
 * Only block comments here: gcc puts the file through cpp (as it does
 * every .S file), which also brings in #include "lib64.inc".
 */
	.intel_syntax noprefix
	.code64

	.set	ZP_EXT_CMD_LINE_PTR, 0x0c8
	.set	ZP_CMD_LINE_PTR, 0x228
	.set	DEBUG_EXIT_PORT, 0x501

	.section .rodata, "a"
msg_writing:
	.ascii	"debugexit: writing to port 0x501\n"
	.set	msg_writing_len, . - msg_writing
msg_still:
	.ascii	"debugexit: port 0x501 did not stop the VM\n"
	.set	msg_still_len, . - msg_still

	.section .text.start, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	cld
	mov	rbx, rsi		/* rbx: the zero page */

	xor	r13d, r13d		/* r13: command-line length */
	mov	r12d, dword ptr [rbx + ZP_CMD_LINE_PTR]
	mov	eax, dword ptr [rbx + ZP_EXT_CMD_LINE_PTR]
	test	eax, eax
	jnz	.Lparse			/* above 4 GiB: ignore the command line */
	test	r12, r12
	jz	.Lparse
.Lstrlen:				/* r12: the command line, NUL-terminated */
	cmp	byte ptr [r12 + r13], 0
	je	.Lparse
	inc	r13
	cmp	r13, 0xffff
	jb	.Lstrlen
.Lparse:
	mov	rsi, r12
	mov	rcx, r13
	mov	r8d, 1			/* default value 1 */
	call	parse_exit
	mov	r14d, eax		/* r14: the value to write */

	lea	rsi, [rip + msg_writing]
	mov	ecx, msg_writing_len
	call	puts
	mov	eax, r14d
	mov	edx, DEBUG_EXIT_PORT
	out	dx, eax			/* QEMU exits here with (v<<1)|1 */

	lea	rsi, [rip + msg_still]
	mov	ecx, msg_still_len
	call	puts
	mov	al, 2
	out	0xf4, al
.Lhalt:
	cli
	hlt
	jmp	.Lhalt
	.size	_start, . - _start

#include "lib64.inc"

	.section .note.GNU-stack, "", @progbits
