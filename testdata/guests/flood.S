/* flood: a guest that prints on COM1 forever ("flood flood ...", a line at
 * a time) and never stops by itself. Used by the tests that a console
 * nobody reads neither blocks a vCPU nor delays --timeout or a signal. */
	.intel_syntax noprefix
	.code64
	.section .text
	.globl _start
_start:
	mov dx, 0x3f8
1:	lea rsi, [rip + msg]
	mov ecx, msg_end - msg
2:	lodsb
	out dx, al
	loop 2b
	jmp 1b
msg:	.ascii "flood flood flood flood flood flood flood flood flood flood flood\n"
msg_end:
